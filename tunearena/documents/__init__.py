"""From a folder of documents to the files a run needs: ingest the folder into a corpus,
synthesise questions and paraphrases with a generator model, filter them through counted
quality gates, and split them so the test measures knowledge injected by fine-tuning."""
