"""build_index -> RagIndex.load -> search, with real FAISS and the packaged MiniLM embedder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunearena.rag.config import RagConfig
from tunearena.rag.corpus import CorpusError
from tunearena.rag.index import RagIndex, build_index, gold_recall_at_k

# Twenty made-up documents on distinct topics; each query below clearly matches one of them.
DOCS = {
    "zephyr-lamp": "The Zephyr lamp from Lumora Systems costs 40 dollars and comes in blue or amber.",
    "orbit-kettle": "The Orbit kettle was designed by Ana Ruiz and boils one litre of water in ninety seconds.",
    "returns": "Customers may return any unused Lumora product within 30 days for a full refund.",
    "tarrow": "Tarrow is a coastal city in Norland, famous for its lighthouse and its fish market.",
    "velmo": "Velmo, the capital of Norland, sits on the river Asel and hosts the national parliament.",
    "glimmer-bees": "Glimmer bees nest in hollow oak trees and produce a violet honey in late autumn.",
    "skyball": "Skyball is played by two teams of six who throw a light ball through floating hoops.",
    "warranty": "Every Lumora clock carries a three-year warranty covering the motor and the dial.",
    "quartz-train": "The Quartz Express train links Velmo and Tarrow in two hours, leaving every morning at seven.",
    "festival": "The Lantern Festival of Norland is held each winter solstice with paper lanterns on the sea.",
    "recipe": "To bake fennel bread, knead rye flour with fennel seeds, salt and yeast, then rest it overnight.",
    "observatory": "The Kessel observatory on Mount Dorn tracks comets with a two-metre mirror telescope.",
    "chess-club": "The Tarrow chess club meets on Thursday evenings in the back room of the harbour library.",
    "volcano": "Mount Ember, an active volcano, last erupted in 1911 and covered three villages in ash.",
    "currency": "Norland's currency is the krell, divided into one hundred small copper pieces called pips.",
    "robot": "The Lumora vacuum robot maps each room with a laser and empties its own dust bin.",
    "opera": "The opera 'Salt and Silence' by Mira Voss premiered in Velmo in 1956 to a standing ovation.",
    "forest": "The Grey Pine forest shelters wolves, lynx and a rare white owl that hunts at dusk.",
    "shipping": "Orders from the Lumora web shop ship within two working days by courier.",
    "language": "Norlandic has four grammatical cases and borrows many sailing words from its neighbours.",
}
QUERIES = {
    "How much does the Zephyr lamp cost?": "zephyr-lamp",
    "Who designed the Orbit kettle?": "orbit-kettle",
    "What money is used in Norland?": "currency",
    "When did Mount Ember last erupt?": "volcano",
    "How long does the train from Velmo to Tarrow take?": "quartz-train",
    "What kind of honey do glimmer bees make?": "glimmer-bees",
}


def write_corpus(path: Path, docs: dict[str, str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for doc_id, text in docs.items():
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl", DOCS)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("index") / "flat"
    summary = build_index(
        RagConfig(corpus=corpus, chunk_tokens=32, chunk_overlap_tokens=8), out_dir
    )
    return out_dir, summary


@pytest.fixture(scope="module")
def rag(built) -> RagIndex:
    return RagIndex.load(built[0])


def test_build_writes_index_dir_and_summary(built):
    out_dir, summary = built
    assert sorted(p.name for p in out_dir.iterdir()) == ["chunks.jsonl", "index.faiss", "meta.json"]
    assert summary["n_documents"] == 20
    # Every document is shorter than 32 tokens: one chunk each.
    assert summary["n_chunks"] == 20
    assert summary["dim"] == 384
    assert summary["index_factory"] == "Flat"
    assert summary["build_s"] > 0
    meta = json.loads((out_dir / "meta.json").read_text())
    assert meta["embedding_model"] == "packaged:all-MiniLM-L6-v2"
    assert (meta["chunk_tokens"], meta["chunk_overlap_tokens"]) == (32, 8)


def test_query_ranks_its_document_first(rag):
    results = rag.search(list(QUERIES), k=3)
    assert [hits[0].doc_id for hits in results] == list(QUERIES.values())
    for hits in results:
        assert len(hits) == 3
        assert hits[0].score > hits[1].score >= hits[2].score
        assert hits[0].text == DOCS[hits[0].doc_id]
        assert hits[0].chunk_id == f"{hits[0].doc_id}#0"
    assert gold_recall_at_k(results, list(QUERIES.values())) == 1.0


def test_k_larger_than_index_returns_every_chunk(rag):
    (hits,) = rag.search(["lamp"], k=50)
    assert len(hits) == 20
    assert rag.search([], k=3) == []


def test_persistence_round_trip(built, rag):
    out_dir, _ = built
    again = RagIndex.load(out_dir)
    assert again.chunks == rag.chunks
    assert again.meta == rag.meta
    query = ["Where does the chess club meet?"]
    assert again.search(query, k=4) == rag.search(query, k=4)


def test_rebuild_replaces_files_and_leaves_no_temp_files(corpus, tmp_path):
    out_dir = tmp_path / "index"
    build_index(RagConfig(corpus=corpus), out_dir)
    smaller = write_corpus(tmp_path / "small.jsonl", dict(list(DOCS.items())[:5]))
    summary = build_index(RagConfig(corpus=smaller, index_factory="HNSW32"), out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["chunks.jsonl", "index.faiss", "meta.json"]
    loaded = RagIndex.load(out_dir)
    assert loaded.index.ntotal == len(loaded.chunks) == summary["n_chunks"] == 5
    assert loaded.meta["index_factory"] == "HNSW32"


@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,Flat"])
def test_approximate_indexes_retrieve_like_flat(corpus, rag, tmp_path, factory):
    out_dir = tmp_path / "index"
    build_index(RagConfig(corpus=corpus, chunk_tokens=32, index_factory=factory), out_dir)
    approx = RagIndex.load(out_dir)
    results = approx.search(list(QUERIES), k=3)
    assert [hits[0].doc_id for hits in results] == list(QUERIES.values())


@pytest.mark.parametrize("factory", ["IDMap,Flat", "IDMap2,Flat"])
def test_idmap_indexes_search_like_flat(corpus, built, rag, tmp_path, factory):
    # IDMap indexes refuse plain add; build_index gives them the row numbers as ids.
    out_dir = tmp_path / "index"
    summary = build_index(
        RagConfig(corpus=corpus, chunk_tokens=32, chunk_overlap_tokens=8, index_factory=factory),
        out_dir,
    )
    assert summary["ann"] is None  # an exact index: nothing to measure against Flat
    idmap = RagIndex.load(out_dir)
    assert idmap.chunks == rag.chunks
    queries = [*QUERIES, "Where does the chess club meet?"]
    assert idmap.search(queries, k=5) == rag.search(queries, k=5)


def test_invalid_factory_names_the_setting(corpus, tmp_path):
    with pytest.raises(ValueError, match="invalid index_factory 'Bogus7'.*rag.index_factory"):
        build_index(RagConfig(corpus=corpus, index_factory="Bogus7"), tmp_path / "index")


def test_long_document_is_chunked_and_found(tmp_path):
    filler = " ".join(f"Section {n} describes nothing in particular." for n in range(40))
    docs = {"long": filler + " The secret vault code is 4711, kept by the night porter.", **DOCS}
    out_dir = tmp_path / "index"
    summary = build_index(
        RagConfig(corpus=write_corpus(tmp_path / "c.jsonl", docs), chunk_tokens=48), out_dir
    )
    assert summary["n_chunks"] > 21
    (hits,) = RagIndex.load(out_dir).search(["What is the code of the secret vault?"], k=1)
    assert hits[0].doc_id == "long"
    assert "4711" in hits[0].text and hits[0].chunk_id != "long#0"


def test_empty_corpus_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="corpus is empty"):
        build_index(RagConfig(corpus=empty), tmp_path / "index")
    assert not (tmp_path / "index").exists()


def test_ivf_with_too_many_lists_fails_before_embedding(corpus, tmp_path):
    with pytest.raises(ValueError, match="IVF index with 64 lists needs at least 64 vectors"):
        build_index(RagConfig(corpus=corpus, index_factory="IVF64,Flat"), tmp_path / "index")


def test_chunks_longer_than_the_embedder_reads_are_rejected(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"chunk_tokens \(512\) exceeds"):
        build_index(RagConfig(corpus=corpus, chunk_tokens=512), tmp_path / "index")


def test_unset_corpus_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="rag.corpus is not set"):
        build_index(RagConfig(), tmp_path / "index")


def test_load_of_incomplete_dir_names_missing_files(built, tmp_path):
    (tmp_path / "index.faiss").write_bytes((built[0] / "index.faiss").read_bytes())
    with pytest.raises(FileNotFoundError, match="missing chunks.jsonl, meta.json"):
        RagIndex.load(tmp_path)
