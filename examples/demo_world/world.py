"""The demo world: a general corpus the base model learns, and a domain it has never seen.

Everything here is derived from one seed, so the files it writes and the base model pretrained
on them are reproducible. The vocabulary is kept small on purpose (made-up names are built
from a fixed set of syllables) so that a model of about a million parameters learns it in
minutes on a CPU.

- **General knowledge**: 40 made-up countries, each with a capital, a language, a currency and a
  national animal, stated in prose and in question/answer form. The general benchmark asks
  about them; the base model knows them, so a drop after fine-tuning is forgetting.
- **Reading comprehension**: passages about freshly invented products and countries, followed
  by a question whose answer is in a passage (the same prompt template the evaluation uses).
  This is what lets the base model answer from retrieved context.
- **The domain**: the product line of a fictional company, Lumora. Documents (the RAG corpus),
  paraphrased documents and questions for fine-tuning, and held-out test questions phrased
  with a template the fine-tuning questions never use for that product.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tunearena.evaluation.prompt import ANSWER_DELIMITER, format_prompt

SYLLABLES = [
    "ka", "lo", "mi", "ra", "ve", "to", "nu", "si", "da", "pe",
    "zo", "ri", "ba", "fe", "gu", "ho", "ja", "ne", "lu", "ty",
]  # fmt: skip
PRODUCT_TYPES = ["lamp", "kettle", "clock", "chair", "fan", "radio"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple", "grey", "pink"]
ANIMALS = ["fox", "owl", "bear", "deer", "wolf", "hawk", "swan", "lynx", "seal", "crane"]

# attribute -> (sentence templates for passages, question templates). For the domain, the
# last question template is held out for testing; the others are used for fine-tuning.
PRODUCT_ATTRS: dict[str, tuple[list[str], list[str]]] = {
    "price": (
        ["The {e} costs {v}.", "The price of the {e} is {v}.", "The {e} sells for {v}."],
        ["What is the price of the {e}?", "How much does the {e} cost?",
         "How many dollars is the {e}?"],
    ),
    "color": (
        ["The {e} comes in {v}.", "The color of the {e} is {v}.", "The {e} is sold in {v}."],
        ["What color is the {e}?", "Which color does the {e} come in?",
         "In what color is the {e} sold?"],
    ),
    "city": (
        ["The {e} is made in {v}.", "The {e} is built in {v}.", "The factory of the {e} is in {v}."],
        ["Where is the {e} made?", "In which city is the {e} built?", "Which city makes the {e}?"],
    ),
    "year": (
        ["The {e} was launched in {v}.", "The {e} came out in {v}.", "The {e} was released in {v}."],
        ["When was the {e} launched?", "In what year did the {e} come out?",
         "Which year was the {e} released?"],
    ),
    "designer": (
        ["The {e} was designed by {v}.", "The designer of the {e} is {v}.", "{v} designed the {e}."],
        ["Who designed the {e}?", "Who is the designer of the {e}?",
         "Which person designed the {e}?"],
    ),
    "warranty": (
        ["The {e} has a warranty of {v}.", "The warranty of the {e} lasts {v}.",
         "The {e} comes with {v} of warranty."],
        ["How long is the warranty of the {e}?", "How many years of warranty does the {e} have?",
         "What warranty comes with the {e}?"],
    ),
}  # fmt: skip

COUNTRY_ATTRS: dict[str, tuple[list[str], list[str]]] = {
    "capital": (
        ["The capital of {e} is {v}.", "{e} has its capital in {v}.", "{v} is the capital of {e}."],
        ["What is the capital of {e}?", "Which city is the capital of {e}?"],
    ),
    "language": (
        ["People in {e} speak {v}.", "The language of {e} is {v}.", "{v} is spoken in {e}."],
        ["What language do people in {e} speak?", "Which language is spoken in {e}?"],
    ),
    "currency": (
        ["The currency of {e} is the {v}.", "In {e} people pay with the {v}.",
         "The {v} is the money of {e}."],
        ["What is the currency of {e}?", "Which money do people in {e} pay with?"],
    ),
    "animal": (
        ["The national animal of {e} is the {v}.", "{e} chose the {v} as its national animal.",
         "The {v} is the national animal of {e}."],
        ["What is the national animal of {e}?", "Which animal is the national animal of {e}?"],
    ),
}  # fmt: skip


def _name(rng: random.Random, syllables: int, used: set[str]) -> str:
    """A fresh capitalised name of ``syllables`` syllables, never returned twice."""
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()
        if name not in used:
            used.add(name)
            return name


def _years(n: int) -> str:
    return f"{n} year" if n == 1 else f"{n} years"


def _product_values(rng: random.Random, cities: list[str], people: list[str]) -> dict[str, str]:
    return {
        "price": f"{rng.randrange(15, 100, 5)} dollars",
        "color": rng.choice(COLORS),
        "city": rng.choice(cities),
        "year": str(rng.randint(2011, 2024)),
        "designer": rng.choice(people),
        "warranty": _years(rng.randint(1, 6)),
    }


def _country_values(
    rng: random.Random, capital: str, languages: list[str], currencies: list[str]
) -> dict[str, str]:
    return {
        "capital": capital,
        "language": rng.choice(languages),
        "currency": rng.choice(currencies),
        "animal": rng.choice(ANIMALS),
    }


@dataclass
class Entity:
    """A product or a country with its attribute values."""

    name: str
    values: dict[str, str]
    kind: str  # "product" or "country"

    @property
    def attrs(self) -> dict[str, tuple[list[str], list[str]]]:
        return PRODUCT_ATTRS if self.kind == "product" else COUNTRY_ATTRS


@dataclass
class World:
    """Every name and value of the demo world, drawn from one seed."""

    seed: int
    countries: list[Entity] = field(default_factory=list)
    products: list[Entity] = field(default_factory=list)
    cities: list[str] = field(default_factory=list)
    people: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    currencies: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)


def make_world(seed: int = 0, n_countries: int = 40, n_products: int = 30) -> World:
    """Draw the general world (countries) and the domain (Lumora's products)."""
    rng = random.Random(seed)
    w = World(seed=seed)
    w.used.add("Lumora")
    w.cities = [_name(rng, 2, w.used) for _ in range(12)]
    w.people = [f"{_name(rng, 2, w.used)} {_name(rng, 2, w.used)}" for _ in range(12)]
    w.languages = [_name(rng, 2, w.used) + "ish" for _ in range(10)]
    w.currencies = [_name(rng, 2, w.used).lower() for _ in range(10)]
    for _ in range(n_countries):
        name, capital = _name(rng, 3, w.used), _name(rng, 2, w.used)
        w.countries.append(
            Entity(name, _country_values(rng, capital, w.languages, w.currencies), "country")
        )
    for _ in range(n_products):
        name = f"{_name(rng, 2, w.used)} {rng.choice(PRODUCT_TYPES)}"
        w.products.append(Entity(name, _product_values(rng, w.cities, w.people), "product"))
    return w


def describe(entity: Entity, rng: random.Random, attrs: list[str] | None = None) -> str:
    """A passage stating ``attrs`` (default: all) of the entity, in a random order and wording."""
    names = list(attrs if attrs is not None else entity.values)
    rng.shuffle(names)
    sentences = [rng.choice(entity.attrs[a][0]) for a in names]
    body = " ".join(s.format(e=entity.name, v=entity.values[a]) for s, a in zip(sentences, names, strict=True))
    return body


def _value_pool(world: World, kind: str, attr: str) -> list[str]:
    if kind == "product":
        return {
            "price": [f"{p} dollars" for p in range(15, 100, 5)],
            "color": COLORS,
            "city": world.cities,
            "year": [str(y) for y in range(2011, 2025)],
            "designer": world.people,
            "warranty": [_years(n) for n in range(1, 7)],
        }[attr]
    return {
        "capital": [c.values["capital"] for c in world.countries],
        "language": world.languages,
        "currency": world.currencies,
        "animal": ANIMALS,
    }[attr]


def mc_item(
    world: World, entity: Entity, attr: str, template: str, rng: random.Random, item_id: str,
    doc_id: str | None = None, n_choices: int = 4,
) -> dict:
    """A multiple-choice QA record: the gold value plus distractors of the same attribute."""
    gold = entity.values[attr]
    distractors = rng.sample([v for v in _value_pool(world, entity.kind, attr) if v != gold],
                             n_choices - 1)
    choices = distractors + [gold]
    rng.shuffle(choices)
    item = {"id": item_id, "question": template.format(e=entity.name), "choices": choices,
            "answer": choices.index(gold)}
    if doc_id is not None:
        item["doc_id"] = doc_id
    return item


def _random_product(world: World, rng: random.Random) -> Entity:
    """A product that exists only in one reading-comprehension example."""
    name = f"{''.join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()} {rng.choice(PRODUCT_TYPES)}"
    return Entity(name, _product_values(rng, world.cities, world.people), "product")


def _random_country(world: World, rng: random.Random) -> Entity:
    name = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
    capital = "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()
    return Entity(name, _country_values(rng, capital, world.languages, world.currencies), "country")


def _passage(entity: Entity, rng: random.Random, keep: list[str]) -> str:
    """A passage about ``entity``, shaped like a retrieved chunk: sometimes ``Title: ...``
    and, for products, sometimes a maker's lead sentence, as the domain's documents have."""
    text = describe(entity, rng, keep)
    if entity.kind == "product" and rng.random() < 0.5:
        maker = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        text = f"{maker} makes the {entity.name}. {text}"
    return f"{entity.name}: {text}" if rng.random() < 0.5 else text


def reading_example(world: World, rng: random.Random, irrelevant_share: float = 0.25) -> str:
    """Passages about 1-3 invented entities and a question.

    Mostly the answer is in one of the passages (the model learns to read its context); in
    ``irrelevant_share`` of the examples the question is about a world fact the passages do
    not mention, so the model also learns to answer from memory when the context is beside
    the point, as retrieval often is.
    """
    make = _random_product if rng.random() < 0.7 else _random_country
    entities = [make(world, rng) for _ in range(rng.choice([1, 2, 2, 3]))]
    if rng.random() < irrelevant_share:
        target = rng.choice(world.countries)
        attr = rng.choice(list(target.values))
        passages = [_passage(e, rng, rng.sample(list(e.values), rng.randint(2, len(e.values))))
                    for e in entities]
    else:
        target = rng.choice(entities)
        attr = rng.choice(list(target.values))
        passages = []
        for e in entities:
            # A random subset of facts, always including the asked one for the target.
            keep = rng.sample(list(e.values), rng.randint(2, len(e.values)))
            if e is target and attr not in keep:
                keep.append(attr)
            passages.append(_passage(e, rng, keep))
    question = rng.choice(target.attrs[attr][1]).format(e=target.name)
    return format_prompt(question, passages) + ANSWER_DELIMITER + target.values[attr]


def general_corpus(world: World, n_reading: int, fact_repeats: int, seed: int) -> list[str]:
    """The base model's pretraining texts: world facts (prose and Q/A) and reading examples."""
    rng = random.Random(seed)
    texts = []
    for _ in range(fact_repeats):
        for c in world.countries:
            texts.append(describe(c, rng))
            attr = rng.choice(list(c.values))
            question = rng.choice(COUNTRY_ATTRS[attr][1]).format(e=c.name)
            texts.append(format_prompt(question) + ANSWER_DELIMITER + c.values[attr])
    texts += [reading_example(world, rng) for _ in range(n_reading)]
    rng.shuffle(texts)
    return texts


def preference_pairs(world: World, seed: int) -> list[dict]:
    """Preference pairs on the training questions: the right answer chosen, a wrong value of
    the same attribute (the kind a test question offers as a distractor) rejected."""
    rng = random.Random(seed)
    pairs = []
    for p in world.products:
        for attr, (_, questions) in PRODUCT_ATTRS.items():
            wrong = [v for v in _value_pool(world, p.kind, attr) if v != p.values[attr]]
            for q in questions[:-1]:
                pairs.append({"prompt": format_prompt(q.format(e=p.name)),
                              "chosen": ANSWER_DELIMITER + p.values[attr],
                              "rejected": ANSWER_DELIMITER + rng.choice(wrong)})
    return pairs


def domain_files(world: World, seed: int, doc_paraphrases: int = 4) -> dict[str, list[dict]]:
    """The domain's JSONL records: RAG documents, fine-tuning data, held-out test questions."""
    rng = random.Random(seed)
    documents, docs_train, qa_train, qa_test = [], [], [], []
    for i, p in enumerate(world.products):
        doc_id = f"product-{i:02d}"
        lead = f"Lumora makes the {p.name}. "
        documents.append({"id": doc_id, "title": p.name, "text": lead + describe(p, rng)})
        docs_train += [{"text": lead + describe(p, rng)} for _ in range(doc_paraphrases)]
        for attr, (_, questions) in PRODUCT_ATTRS.items():
            for q in questions[:-1]:
                qa_train.append({"prompt": format_prompt(q.format(e=p.name)),
                                 "response": ANSWER_DELIMITER + p.values[attr]})
            qa_test.append(mc_item(world, p, attr, questions[-1], rng, f"{doc_id}-{attr}", doc_id))
    return {"documents": documents, "docs_train": docs_train, "qa_train": qa_train,
            "qa_test": qa_test}


def general_replay(world: World, seed: int, paraphrases: int = 3) -> list[dict]:
    """A sample of the general knowledge the base model was pretrained on: prose about every
    country, for replay during fine-tuning. No question is written out, so the benchmark's
    questions never appear in it."""
    rng = random.Random(seed)
    return [{"text": describe(c, rng)} for _ in range(paraphrases) for c in world.countries]


def general_benchmark(world: World, seed: int) -> list[dict]:
    """Multiple-choice questions on the world facts the base model was pretrained on."""
    rng = random.Random(seed)
    return [
        mc_item(world, c, attr, COUNTRY_ATTRS[attr][1][0], rng, f"country-{i:02d}-{attr}")
        for i, c in enumerate(world.countries)
        for attr in COUNTRY_ATTRS
    ]
