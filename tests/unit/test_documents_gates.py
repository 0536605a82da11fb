"""The quality gates on synthesised questions and paraphrases, and the train/test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rapidfuzz import fuzz

from tunearena.documents.gates import (
    answer_check,
    answers_agree,
    choose_distractors,
    deduplicate,
    deduplicate_paraphrases,
    key_terms,
    names,
    normalise,
    numbers,
    paraphrase_faithful,
    supported,
)
from tunearena.documents.records import Document, DocumentsError, Paraphrase, QACandidate
from tunearena.documents.split import (
    leak_free_paraphrases,
    mc_records,
    split_questions,
    train_records,
)
from tunearena.evaluation.prompt import ANSWER_DELIMITER, format_prompt

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo_world"

PEHO = Document(
    id="peho",
    title="Peho lamp",
    text=(
        "Lumora makes the Peho lamp. The Peho lamp is built in Bafe. The Peho lamp came out "
        "in 2012. The warranty of the Peho lamp lasts 2 years. The Peho lamp sells for 25 "
        "dollars. The designer of the Peho lamp is Guja Dalo. The Peho lamp comes in grey."
    ),
)
LOPE = Document(
    id="lope",
    title="Lope lamp",
    text=(
        "Lumora makes the Lope lamp. The Lope lamp comes in white. The Lope lamp sells for 85 "
        "dollars. The warranty of the Lope lamp lasts 6 years. The Lope lamp was designed by "
        "Tynu Neho. The Lope lamp is built in Jarvo."
    ),
)
KETTLE = Document(
    id="kettle",
    title="Orbit kettle",
    text=(
        "The Orbit kettle sells for 40 dollars. The Orbit kettle comes in red. The Orbit "
        "kettle was designed by Mira Sol. The Orbit kettle is built in Kesta."
    ),
)
DOCS = [PEHO, LOPE, KETTLE]


def qa(doc: Document, passage: str, question: str, answer: str, distractors=()) -> QACandidate:
    return QACandidate(
        doc_id=doc.id,
        passage=passage,
        question=question,
        answer=answer,
        distractors=list(distractors),
    )


def questions(items) -> list[str]:
    return [c.question for c in items]


# --- normalisation -------------------------------------------------------------------------


def test_normalise_folds_case_punctuation_thousands_and_number_words():
    assert normalise("  The PEHO lamp: 1,250 dollars, two years; 2.5 kg.") == (
        "the peho lamp 1250 dollars 2 years 2.5 kg"
    )
    assert numbers("It costs 1,250 dollars for two, or 3.5 each; one of them.") == {
        "1250",
        "2",
        "3.5",
    }


def test_names_are_capitalised_words_that_do_not_open_a_sentence():
    text = "Lumora makes the Peho lamp. The designer is Guja Dalo.\nIn 2012 Bafe built it."
    assert names(text) == {"peho", "guja", "dalo", "bafe"}


# --- supported -----------------------------------------------------------------------------


def test_supported_keeps_answers_in_the_document_and_drops_the_rest():
    keep = [
        qa(PEHO, "", "Who designed the Peho lamp?", "Guja Dalo"),  # exact
        qa(PEHO, "", "Where is the Peho lamp made?", "BAFE."),  # exact after normalising
        qa(PEHO, "", "Who is the Peho lamp's designer?", "Guja Dallo"),  # fuzzy
        qa(PEHO, "", "How long is the Peho lamp's warranty?", "two years"),  # number word
    ]
    drop = [
        qa(PEHO, "", "What does the Peho lamp cost?", "85 dollars"),  # number not in the doc
        qa(PEHO, "", "What colour is the Peho lamp?", "purple"),  # not in the doc
        qa(PEHO, "", "Is the Peho lamp grey?", "grey"),  # the question gives it away
        qa(PEHO, "", "What is said?", "The warranty of the Peho lamp lasts 2 years, it says"),
        qa(PEHO, "", "Who makes it?", "  "),
    ]
    kept, count = supported(keep + drop, DOCS)
    assert questions(kept) == questions(keep)
    assert (count.gate, count.seen, count.kept) == ("supported", 9, 4)
    assert len(count.dropped_examples) == 3
    assert "85 dollars" in count.dropped_examples[0]
    assert "number" in count.dropped_examples[0]


def test_supported_threshold_and_answer_length_are_settings():
    cand = qa(PEHO, "", "Who is the Peho lamp's designer?", "Guja Dallo")
    assert supported([cand], DOCS, threshold=1.0)[1].kept == 0
    long = qa(PEHO, "", "Where?", "built in Bafe")
    assert supported([long], DOCS, max_answer_words=2)[1].kept == 0
    assert supported([long], DOCS, max_answer_words=3)[1].kept == 1


# --- answer check --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "given", "agree"),
    [
        ("Guja Dalo", "The Peho lamp was designed by Guja Dalo.", True),
        ("Guja Dalo", "guja dalo", True),
        ("Guja Dalo", "Guja Dallo", True),
        ("2 years", "Two years.", True),
        ("Guja Dalo", "Dalo", False),  # shorter than the gold: must match whole
        ("25 dollars", "85 dollars", False),  # the numbers must agree
        ("25 dollars", "It sells for 85 dollars.", False),
        ("grey", "", False),
        ("grey", "white", False),
    ],
)
def test_answers_agree(gold, given, agree):
    assert answers_agree(gold, given, 0.8) is agree


def test_answer_check_keeps_what_the_generator_answered_alike():
    cands = [
        qa(PEHO, "", "Who designed the Peho lamp?", "Guja Dalo"),
        qa(PEHO, "", "What does the Peho lamp cost?", "25 dollars"),
        qa(PEHO, "", "What colour is the Peho lamp?", "grey"),
    ]
    kept, count = answer_check(cands, ["It was Guja Dalo.", "85 dollars", "grey"], 0.8)
    assert questions(kept) == [cands[0].question, cands[2].question]
    assert (count.gate, count.seen, count.kept) == ("answer_check", 3, 2)
    assert count.dropped_examples == [
        "What does the Peho lamp cost? -> 25 dollars (generator: '85 dollars')"
    ]
    with pytest.raises(ValueError, match="2 generator answers for 3 questions"):
        answer_check(cands, ["a", "b"], 0.8)


# --- duplicates ----------------------------------------------------------------------------


def test_deduplicate_drops_exact_and_near_duplicates_keeping_the_first():
    first = qa(PEHO, "p1", "What colour is the Peho lamp?", "grey")
    cands = [
        first,
        qa(PEHO, "p1", "what colour is the PEHO lamp", "Grey."),  # exact after normalising
        qa(PEHO, "p1", "What color is the Peho lamp?", "grey"),  # near, same answer
        qa(LOPE, "p2", "What colour is the Peho lamp?", "white"),  # exact, other doc
        # One word apart but another name: another question.
        qa(LOPE, "p3", "What colour is the Lope lamp?", "white"),
        # One word apart, the same names, another answer: another question.
        qa(PEHO, "p4", "When was the Peho lamp made?", "2012"),
        qa(PEHO, "p5", "Where was the Peho lamp made?", "Bafe"),
    ]
    assert fuzz.token_sort_ratio(normalise(cands[4].question), normalise(first.question)) >= 90
    kept, count = deduplicate(cands, threshold=0.9)
    assert kept == [first, cands[4], cands[5], cands[6]]
    assert (count.gate, count.seen, count.kept) == ("duplicate", 7, 4)


def test_deduplicate_at_a_lower_threshold_drops_rewordings():
    cands = [
        qa(PEHO, "p", "Who designed the Peho lamp?", "Guja Dalo"),
        qa(PEHO, "p", "Who was the designer of the Peho lamp?", "Guja Dalo"),
    ]
    assert deduplicate(cands, threshold=0.95)[1].kept == 2
    assert deduplicate(cands, threshold=0.6)[1].kept == 1


def test_deduplicate_paraphrases_drops_copies_of_the_document_and_of_each_other():
    distinct = Paraphrase(
        doc_id="peho",
        text=(
            "Guja Dalo designed the Peho lamp, which Lumora builds in Bafe. It came out in "
            "2012, costs 25 dollars, comes in grey and has a 2 year warranty."
        ),
    )
    other = Paraphrase(
        doc_id="peho",
        text=(
            "Sold in grey for 25 dollars, the Peho lamp is a Lumora product from Bafe, first "
            "sold in 2012 and designed by Guja Dalo; its warranty runs 2 years."
        ),
    )
    copy = Paraphrase(doc_id="peho", text=PEHO.text.upper())
    again = Paraphrase(doc_id="peho", text=distinct.text + " Really.")
    empty = Paraphrase(doc_id="peho", text=" ... ")
    # The same text about another document is not a copy of this one's.
    elsewhere = Paraphrase(doc_id="lope", text=distinct.text)
    kept, count = deduplicate_paraphrases([distinct, copy, other, again, empty, elsewhere], DOCS)
    assert kept == [distinct, other, elsewhere]
    assert (count.gate, count.seen, count.kept) == ("paraphrase_duplicate", 6, 3)


# --- faithful paraphrases ------------------------------------------------------------------


def test_paraphrase_faithful_needs_every_number_and_name_and_no_new_number():
    good = Paraphrase(
        doc_id="peho",
        text=(
            "Lumora's Peho lamp, built in Bafe and designed by Guja Dalo, came out in 2012. "
            "It costs 25 dollars, is grey, and carries a two year warranty."
        ),
    )
    lost_number = Paraphrase(doc_id="peho", text=good.text.replace(" 2012", " the past"))
    lost_name = Paraphrase(doc_id="peho", text=good.text.replace("Bafe", "a factory"))
    new_number = Paraphrase(doc_id="peho", text=good.text + " It weighs 3 kilograms.")
    changed = Paraphrase(doc_id="peho", text=good.text.replace("25 dollars", "35 dollars"))
    kept, count = paraphrase_faithful([good, lost_number, lost_name, new_number, changed], DOCS)
    assert kept == [good]
    assert (count.gate, count.seen, count.kept) == ("paraphrase_faithful", 5, 1)
    assert count.dropped_examples == [
        "peho: missing 2012",
        "peho: missing bafe",
        "peho: adds 3",
    ]


# --- distractors ---------------------------------------------------------------------------


def product_questions() -> list[QACandidate]:
    out = []
    for doc, price, colour, designer, place in (
        (PEHO, "25 dollars", "grey", "Guja Dalo", "Bafe"),
        (LOPE, "85 dollars", "white", "Tynu Neho", "Jarvo"),
        (KETTLE, "40 dollars", "red", "Mira Sol", "Kesta"),
    ):
        name = doc.title
        out += [
            qa(doc, "price", f"What does the {name} cost?", price),
            qa(doc, "colour", f"What colour is the {name}?", colour),
            qa(doc, "designer", f"Who designed the {name}?", designer),
            qa(doc, "place", f"Where is the {name} built?", place),
        ]
    return out


def test_distractors_are_borrowed_from_alike_questions_about_other_documents():
    kept, count = choose_distractors(product_questions(), DOCS, n_choices=3, seed=0)
    assert count.kept == count.seen == 12
    by_question = {c.question: c.distractors for c in kept}
    assert sorted(by_question["What does the Peho lamp cost?"]) == ["40 dollars", "85 dollars"]
    assert sorted(by_question["Who designed the Orbit kettle?"]) == ["Guja Dalo", "Tynu Neho"]


def test_a_distractor_is_never_the_answer_nor_in_the_questions_document():
    cands = product_questions()
    # The generator's own: the answer reworded, a fact of the document, and two good ones.
    cands[0] = cands[0].model_copy(
        update={"distractors": ["25 Dollars", "grey", "30 dollars", "30 dollars.", "45 dollars"]}
    )
    # The Lope lamp's colour given as grey: the Peho lamp's colour question may not borrow it
    # (it is the answer), nor the Peho lamp's other questions (it is in their document).
    cands[5] = cands[5].model_copy(update={"answer": "grey"})
    kept, _ = choose_distractors(cands, DOCS, n_choices=4, seed=3)
    assert kept[0].distractors[:2] == ["30 dollars", "45 dollars"]
    text = {d.id: normalise(d.text) for d in DOCS}
    for cand in kept:
        assert len(cand.distractors) == 3
        assert len({normalise(d) for d in cand.distractors}) == 3
        for d in cand.distractors:
            assert normalise(d) != normalise(cand.answer)
            assert f" {normalise(d)} " not in f" {text[cand.doc_id]} "


def test_questions_without_enough_distractors_are_dropped_and_counted():
    # Two documents: a question can borrow one answer at most.
    cands = [
        qa(PEHO, "price", "What does the Peho lamp cost?", "25 dollars"),
        qa(LOPE, "price", "What does the Lope lamp cost?", "85 dollars"),
    ]
    kept, count = choose_distractors(cands, DOCS, n_choices=3, seed=0)
    assert kept == [] and (count.seen, count.kept) == (2, 0)
    assert count.dropped_examples[0].endswith("(1 distractors found)")
    # The generator's own distractor makes up the number.
    own = cands[0].model_copy(update={"distractors": ["10 dollars"]})
    kept, count = choose_distractors([own, cands[1]], DOCS, n_choices=3, seed=0)
    assert [c.distractors for c in kept] == [["10 dollars", "85 dollars"]]
    assert count.kept == 1


def test_distractors_are_deterministic_given_the_seed():
    cands = product_questions()
    runs = [choose_distractors(cands, DOCS, n_choices=2, seed=s)[0] for s in (7, 7)]
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="n_choices"):
        choose_distractors(cands, DOCS, n_choices=1)


# --- split ---------------------------------------------------------------------------------


def many_questions() -> list[QACandidate]:
    """Four facts per document, two or three wordings each."""
    wordings = {
        "price": ["What does the {} cost?", "How much is the {}?", "What is the {}'s price?"],
        "colour": ["What colour is the {}?", "In which colour is the {} sold?"],
        "designer": ["Who designed the {}?", "Who is the designer of the {}?"],
        "place": ["Where is the {} built?", "In which town is the {} made?"],
    }
    out = []
    for cand in product_questions():
        doc = next(d for d in DOCS if d.id == cand.doc_id)
        for wording in wordings[cand.passage]:
            out.append(cand.model_copy(update={"question": wording.format(doc.title)}))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_split_rule_holds(seed):
    cands = many_questions()
    train, test, count = split_questions(cands, test_fraction=0.25, seed=seed)
    passages = lambda items: {(c.doc_id, c.passage) for c in items}  # noqa: E731
    assert not passages(train) & passages(test)
    assert test, "every document has four facts: one goes to test"
    # Each document has facts on both sides; every test question is about a trained document.
    for doc in DOCS:
        assert any(c.doc_id == doc.id for c in train)
        assert any(c.doc_id == doc.id for c in test)
    assert {c.doc_id for c in test} <= {d.id for d in DOCS}
    for t in test:
        for c in train:
            assert not (
                fuzz.token_sort_ratio(normalise(t.question), normalise(c.question)) >= 90
                and key_terms(t.question) == key_terms(c.question)
            )
    assert count.gate == "leak" and count.seen == len(cands)
    assert sorted(questions(train + test)) == sorted(questions(cands))  # nothing leaks here


def test_the_split_is_deterministic_and_keeps_the_order():
    cands = many_questions()
    first = split_questions(cands, 0.3, seed=11)
    assert first == split_questions(cands, 0.3, seed=11)
    train, test, _ = first
    index = {c.question: i for i, c in enumerate(cands)}
    assert [index[c.question] for c in train] == sorted(index[c.question] for c in train)
    assert [index[c.question] for c in test] == sorted(index[c.question] for c in test)
    assert {tuple(questions(split_questions(cands, 0.3, seed=s)[1])) for s in range(10)} != {
        tuple(questions(test))
    }, "another seed draws other facts"


def test_small_inputs():
    one_fact = [qa(PEHO, "p", "Who designed the Peho lamp?", "Guja Dalo")]
    train, test, count = split_questions(one_fact, 0.2, seed=0)
    assert (train, test) == (one_fact, [])
    two_facts = one_fact + [qa(PEHO, "q", "What colour is the Peho lamp?", "grey")]
    train, test, _ = split_questions(two_facts, 0.2, seed=0)
    assert len(train) == len(test) == 1
    assert split_questions([], 0.2, seed=0)[:2] == ([], [])
    for bad in (0, 1, 1.5):
        with pytest.raises(DocumentsError, match="test_fraction"):
            split_questions(two_facts, bad, seed=0)


def test_one_fact_documents_are_pooled_and_drawn_to_the_fraction():
    cands = [
        qa(Document(id=f"d{i}", title="", text=""), f"fact {i}", f"Question {i} here?", "x")
        for i in range(20)
    ]
    train, test, _ = split_questions(cands, 0.25, seed=1)
    assert (len(train), len(test)) == (15, 5)


def test_leak_gate_drops_a_test_question_worded_like_a_training_one():
    # Two facts of one document, asked in nearly the same words: one goes to each side.
    cands = [
        qa(
            PEHO,
            "The Peho lamp sells for 25 dollars.",
            "What does the Peho lamp cost?",
            "25 dollars",
        ),
        qa(
            PEHO, "It cost 9 dollars to make.", "What does the Peho lamp cost to make?", "9 dollars"
        ),
    ]
    train, test, count = split_questions(cands, 0.5, seed=0, threshold=0.85)
    assert len(train) == 1 and test == []
    assert (count.seen, count.kept) == (2, 1)
    assert count.dropped_examples[0].startswith("test: ")


def test_leak_gate_drops_a_training_question_that_contains_a_test_question():
    short = qa(PEHO, "designer", "Who designed the Peho lamp?", "Guja Dalo")
    long = qa(
        PEHO,
        "launch",
        "Who designed the Peho lamp, and in which year did Lumora launch it?",
        "Guja Dalo, 2012",
    )
    outcomes = {}
    for seed in range(10):
        train, test, count = split_questions([short, long], 0.5, seed=seed)
        outcomes[tuple(questions(test))] = (train, count)
    # The short question in test: the long one, holding it, leaves training.
    train, count = outcomes[(short.question,)]
    assert train == [] and (count.seen, count.kept) == (2, 1)
    assert count.dropped_examples == [f"train: {long.question} (holds: {short.question})"]
    # The long one in test: the short one cannot hold it, nothing is dropped.
    train, count = outcomes[(long.question,)]
    assert train == [short] and count.kept == 2


def test_paraphrases_holding_a_test_question_are_dropped():
    test = [qa(PEHO, "p", "Who designed the Peho lamp?", "Guja Dalo")]
    paras = [
        Paraphrase(doc_id="peho", text="Guja Dalo designed the Peho lamp."),
        Paraphrase(doc_id="peho", text="Who designed the Peho lamp? Guja Dalo did."),
    ]
    kept, count = leak_free_paraphrases(paras, test)
    assert kept == paras[:1]
    assert (count.gate, count.seen, count.kept) == ("paraphrase_leak", 2, 1)


# --- records -------------------------------------------------------------------------------


def test_mc_records_put_the_answer_among_the_choices_at_a_seeded_position():
    test, _ = choose_distractors(product_questions(), DOCS, n_choices=3, seed=0)
    rows = mc_records(test, n_choices=3, seed=5)
    assert rows == mc_records(test, n_choices=3, seed=5)
    assert len({r["id"] for r in rows}) == len(rows)
    assert rows[0]["id"] == "peho-q1" and rows[4]["id"] == "lope-q1"
    for row, cand in zip(rows, test, strict=True):
        assert set(row) == {"id", "question", "choices", "answer", "doc_id"}
        assert row["choices"][row["answer"]] == cand.answer
        assert sorted(row["choices"]) == sorted([cand.answer, *cand.distractors])
        assert row["doc_id"] == cand.doc_id
    assert len({r["answer"] for r in rows}) == 3, "the answer is not always in one place"
    with pytest.raises(ValueError, match="distractors"):
        mc_records(test, n_choices=4, seed=0)


def test_train_records_are_written_as_the_demo_world_writes_them():
    cand = qa(PEHO, "p", "What is the price of the Peho lamp?", "25 dollars ")
    demo = json.loads((DEMO / "domain" / "qa_train.jsonl").read_text().splitlines()[0])
    assert train_records([cand], format_prompt, ANSWER_DELIMITER) == [demo]


def test_a_paraphrase_that_invents_a_name_is_not_faithful():
    doc = Document(id="d", title="Peho lamp", text="The Peho lamp comes in grey.")
    invented = Paraphrase(doc_id="d", text="The Peho lamp is a Polish item, made in grey.")
    faithful = Paraphrase(doc_id="d", text="Grey is the colour the Peho lamp comes in.")
    kept, count = paraphrase_faithful([invented, faithful], [doc])
    assert kept == [faithful]
    assert count.dropped_examples == ["d: adds polish"]
