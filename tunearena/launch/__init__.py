"""Launch: the CLI, the experiment config, the pipeline and its run manifest."""
