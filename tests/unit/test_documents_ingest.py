"""ingest: a folder, glob or JSONL corpus read into documents with real extractors
(markdown-it-py, trafilatura, pypdf), on files the tests write (PDFs with fpdf2)."""

from __future__ import annotations

import json
from pathlib import Path

import pypdf
import pytest
from fpdf import FPDF

from tunearena.documents.ingest import NO_TEXT_LAYER, Ingested, ingest, write_documents
from tunearena.documents.records import Document, DocumentsError
from tunearena.rag.corpus import load_documents

ARTICLE_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Peho lamp care | Lumora shop</title>
<script>var tracker = "SCRIPT-MARKER";</script><style>body { color: red }</style></head>
<body>
<nav><ul><li><a href="/">Home NAV-MARKER</a></li><li><a href="/shop">Shop</a></li>
<li><a href="/about">About us</a></li></ul></nav>
<main><article>
<h1>Caring for the Peho lamp</h1>
<p>The Peho lamp is made in Bafe by Lumora. Its shade is woven from grey linen and should be
dusted once a week with a dry cloth.</p>
<p>The warranty of the Peho lamp lasts two years from the date of purchase. Keep the receipt,
because a warranty claim needs it.</p>
<p>Replace the bulb only with a 40 watt bulb; a stronger bulb scorches the linen shade.</p>
</article></main>
<footer><p>Copyright 2024 Lumora FOOTER-MARKER. All rights reserved.</p>
<a href="/privacy">Privacy policy</a></footer>
<script>console.log("SCRIPT2-MARKER")</script>
</body></html>
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_pdf(path: Path, pages: list[str], title: str | None = None) -> Path:
    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def write_drawing_pdf(path: Path) -> Path:
    """A PDF whose only page holds a drawn rectangle: no text layer, as a scan has none."""
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 80, 40)
    pdf.output(str(path))
    return path


def by_id(result: Ingested) -> dict[str, Document]:
    return {doc.id: doc for doc in result.documents}


def reasons(result: Ingested) -> dict[str, str]:
    return {s.path: s.reason for s in result.skipped}


def test_markdown_becomes_plain_text_with_its_heading_for_title(tmp_path):
    write(tmp_path / "docs" / "lamp.md", (
        "# The *Peho* lamp\n\n"
        "Lumora makes the [Peho lamp](https://lumora.example/peho) in `Bafe`,\n"
        "a town by the sea.\n\n"
        "![a photo of the lamp](lamp.png)\n\n"
        "## Colours\n\n"
        "- grey\n- white\n\n"
        "| part | price |\n|---|---|\n| bulb | 3 dollars |\n\n"
        "```\nreset: hold the switch for 5 s\n```\n"
        "<div class=\"ad\">raw html</div>\n"))
    doc = ingest("docs", tmp_path).documents[0]
    assert doc.id == "lamp" and doc.source == "lamp.md"
    assert doc.title == "The Peho lamp"
    assert doc.text == (
        "The Peho lamp\n\n"
        "Lumora makes the Peho lamp in Bafe, a town by the sea.\n\n"
        "Colours\n\n"
        "grey\nwhite\n\n"
        "part | price\nbulb | 3 dollars\n\n"
        "reset: hold the switch for 5 s")


def test_markdown_front_matter_title_wins_and_is_not_text(tmp_path):
    write(tmp_path / "d" / "faq.md", "---\ntitle: Lamp FAQ\ndate: 2024-01-01\n---\n"
                                     "Where is it made? In Bafe.\n")
    write(tmp_path / "d" / "notes.markdown", "No heading here, only a sentence.\n")
    docs = by_id(ingest("d", tmp_path))
    assert docs["faq"].title == "Lamp FAQ"
    assert docs["faq"].text == "Where is it made? In Bafe."
    assert docs["notes"].title == "notes"  # no level-1 heading: the file's stem


def test_text_file_title_is_a_short_first_line_else_the_stem(tmp_path):
    write(tmp_path / "d" / "warranty.txt", "\n  Warranty terms  \n\nTwo   years,\tfrom the date"
                                           " of purchase.\r\n\r\n\r\n\r\nKeep the receipt.\n")
    write(tmp_path / "d" / "long.txt", "A first line far too long to be a heading " * 5 + "\n")
    docs = by_id(ingest("d", tmp_path))
    assert docs["warranty"].title == "Warranty terms"
    assert docs["warranty"].text == ("Warranty terms\n\nTwo years, from the date of purchase."
                                     "\n\nKeep the receipt.")
    assert docs["long"].title == "long"


def test_html_keeps_the_article_and_drops_navigation_footer_and_scripts(tmp_path):
    write(tmp_path / "site" / "care.html", ARTICLE_HTML)
    doc = ingest("site", tmp_path).documents[0]
    assert doc.id == "care" and doc.title == "Caring for the Peho lamp"
    assert "The warranty of the Peho lamp lasts two years" in doc.text
    assert "Replace the bulb only with a 40 watt bulb" in doc.text
    for boilerplate in ("NAV-MARKER", "FOOTER-MARKER", "SCRIPT-MARKER", "SCRIPT2-MARKER",
                        "color: red", "Privacy policy", "About us"):
        assert boilerplate not in doc.text
    # One paragraph per block, separated by blank lines; a line wrap inside <p> is a space.
    assert "\n\nThe Peho lamp is made in Bafe by Lumora. Its shade is woven from grey linen " \
           "and should be dusted" in doc.text


def test_html_title_falls_back_to_the_title_element(tmp_path):
    write(tmp_path / "s" / "page.htm", "<html><head><title>Opening hours</title></head><body>"
          "<p>The Lumora shop opens at nine and closes at five on weekdays.</p></body></html>")
    doc = ingest("s", tmp_path).documents[0]
    assert (doc.id, doc.title) == ("page", "Opening hours")
    assert doc.text == "The Lumora shop opens at nine and closes at five on weekdays."


def test_pdf_text_of_every_page_with_the_metadata_title(tmp_path):
    (tmp_path / "p").mkdir()
    write_pdf(tmp_path / "p" / "manual.pdf",
              ["The Peho lamp is made in Bafe.\nIts warranty lasts two years.",
               "Page two: replace the bulb with a 40 watt one."],
              title="Peho lamp manual")
    write_pdf(tmp_path / "p" / "untitled.pdf", ["Shipping notes\nParcels leave on Mondays."])
    docs = by_id(ingest("p", tmp_path))
    assert docs["manual"].title == "Peho lamp manual"
    assert docs["manual"].text == ("The Peho lamp is made in Bafe.\nIts warranty lasts two "
                                   "years.\n\nPage two: replace the bulb with a 40 watt one.")
    assert docs["untitled"].title == "Shipping notes"  # no metadata title: the first line
    assert docs["untitled"].source == "untitled.pdf"


def test_pdf_without_text_encrypted_or_broken_is_skipped_with_the_reason(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    write_pdf(folder / "good.pdf", ["Readable text about the lamp."])
    write_drawing_pdf(folder / "scan.pdf")
    writer = pypdf.PdfWriter(clone_from=write_pdf(folder / "plain.pdf", ["Secret text."]))
    writer.encrypt("hunter2")
    writer.write(folder / "locked.pdf")
    (folder / "plain.pdf").unlink()
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    result = ingest("p", tmp_path)
    assert [d.id for d in result.documents] == ["good"]
    why = reasons(result)
    assert why["scan.pdf"] == NO_TEXT_LAYER
    assert "ocrmypdf" in why["scan.pdf"]
    assert why["locked.pdf"].startswith("encrypted with a password")
    assert why["broken.pdf"].startswith("cannot be read as a PDF (")
    assert result.files_seen == 4


def test_unsupported_and_undecodable_files_are_listed_with_reasons(tmp_path):
    write(tmp_path / "d" / "ok.txt", "Readable.")
    (tmp_path / "d" / "report.docx").write_bytes(b"PK\x03\x04")
    (tmp_path / "d" / "Makefile").write_text("all:\n")
    (tmp_path / "d" / "latin.txt").write_bytes("Caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "d" / "utf16.md").write_bytes("plain utf-16, no BOM".encode("utf-16-le"))
    (tmp_path / "d" / "blank.md").write_text("  \n\n\t\n")
    why = reasons(ingest("d", tmp_path))
    assert why["report.docx"] == ("unsupported type .docx (tunearena reads .md, .txt, .html, "
                                  ".pdf, .jsonl)")
    assert why["Makefile"].startswith("unsupported type (no suffix)")
    assert why["latin.txt"].startswith("not UTF-8 (byte 0xe9 at offset 3")
    assert why["latin.txt"].endswith("save it as UTF-8")
    assert "save it as UTF-8" in why["utf16.md"]
    assert why["blank.md"] == "no text"


def test_utf8_bom_and_utf16_with_bom_are_read(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bom.txt").write_bytes("\ufeffWith a BOM.".encode())
    (tmp_path / "d" / "wide.txt").write_text("Windows Unicode.", encoding="utf-16")
    docs = by_id(ingest("d", tmp_path))
    assert docs["bom"].text == "With a BOM." and docs["wide"].text == "Windows Unicode."


def test_ids_are_relative_paths_unique_and_stable(tmp_path):
    write(tmp_path / "d" / "guides" / "setup.md", "# Setup\n\nPlug it in.")
    write(tmp_path / "d" / "a.md", "# A\n\nMarkdown a.")
    write(tmp_path / "d" / "a.txt", "Text a.")
    write(tmp_path / "d" / "b.txt", "Text b.")
    first = ingest("d", tmp_path)
    assert [(d.id, d.source) for d in first.documents] == [
        ("a.md", "a.md"), ("a.txt", "a.txt"), ("b", "b.txt"), ("guides/setup", "guides/setup.md")]
    assert ingest(str(tmp_path / "d"), Path("/nowhere")) == first  # absolute source, same ids


def test_a_long_id_that_meets_another_id_is_counted_up(tmp_path):
    write(tmp_path / "d" / "a.md", "Markdown a.")
    write(tmp_path / "d" / "a.txt", "Text a.")
    write(tmp_path / "d" / "a.md.txt", "Text a.md.")
    ids = [d.id for d in ingest("d", tmp_path).documents]
    assert len(set(ids)) == 3 and set(ids) >= {"a.md", "a.txt"}


def test_exact_duplicate_texts_keep_the_first(tmp_path):
    write(tmp_path / "d" / "one.txt", "The lamp is grey.\n")
    write(tmp_path / "d" / "two.md", "The   lamp is grey.")  # same text once normalised
    write(tmp_path / "d" / "zed" / "three.txt", "The lamp is grey.")
    result = ingest("d", tmp_path)
    assert [d.id for d in result.documents] == ["one"]
    assert reasons(result) == {"two.md": "same text as one", "zed/three.txt": "same text as one"}


def test_a_skipped_copy_does_not_push_its_original_to_a_long_id(tmp_path):
    write(tmp_path / "d" / "a.md", "Same words.")
    write(tmp_path / "d" / "a.txt", "Same words.")
    result = ingest("d", tmp_path)
    assert [d.id for d in result.documents] == ["a"]
    assert reasons(result) == {"a.txt": "same text as a"}


def test_hidden_files_and_folders_are_left_out(tmp_path):
    write(tmp_path / "d" / "seen.txt", "Visible.")
    write(tmp_path / "d" / ".draft.txt", "Hidden file.")
    write(tmp_path / "d" / ".git" / "notes.md", "Hidden folder.")
    result = ingest("d", tmp_path)
    assert [d.id for d in result.documents] == ["seen"]
    assert result.skipped == [] and result.files_seen == 1


def test_glob_picks_matching_files_with_ids_from_its_fixed_folder(tmp_path):
    write(tmp_path / "kb" / "top.md", "# Top\n\nTop text.")
    write(tmp_path / "kb" / "deep" / "er" / "inner.md", "Inner text.")
    write(tmp_path / "kb" / "other.txt", "Not a match.")
    write(tmp_path / "kb" / ".hidden" / "x.md", "Hidden.")
    result = ingest("kb/**/*.md", tmp_path)
    assert [(d.id, d.source) for d in result.documents] == [
        ("deep/er/inner", "deep/er/inner.md"), ("top", "top.md")]
    assert ingest("kb/*.txt", tmp_path).documents[0].id == "other"


def test_jsonl_source_keeps_ids_and_titles(tmp_path):
    corpus = write(tmp_path / "corpus.jsonl", "\n".join(json.dumps(r) for r in [
        {"id": "peho", "title": "Peho lamp", "text": "Lumora   makes the Peho lamp."},
        {"id": "velmo", "text": "Velmo is a kettle."}]) + "\n")
    result = ingest(corpus.name, tmp_path)
    assert result.documents == [
        Document(id="peho", title="Peho lamp", text="Lumora makes the Peho lamp.",
                 source="corpus.jsonl:1"),
        Document(id="velmo", title="", text="Velmo is a kettle.", source="corpus.jsonl:2")]


def test_jsonl_in_a_folder_gives_a_document_per_record_and_a_bad_one_is_skipped(tmp_path):
    write(tmp_path / "d" / "faq.jsonl", json.dumps({"id": "q1", "text": "Record one."}) + "\n"
          + json.dumps({"id": "q2", "text": "Record two."}) + "\n")
    write(tmp_path / "d" / "bad.jsonl", json.dumps({"id": "x", "text": "ok"}) + "\n"
          + json.dumps({"id": "y"}) + "\n")
    write(tmp_path / "d" / "q1.txt", "A file whose id a record wants.")
    result = ingest("d", tmp_path)
    assert [d.id for d in result.documents] == ["faq.jsonl#q1", "q2", "q1.txt"]
    assert "bad.jsonl:2" in reasons(result)["bad.jsonl"]
    assert "'text' must be a non-empty string" in reasons(result)["bad.jsonl"]


def test_written_documents_read_back_by_the_corpus_reader_and_by_ingest(tmp_path):
    write(tmp_path / "d" / "a.md", "# Alpha\n\nAlpha text.")
    write(tmp_path / "d" / "sub" / "b.txt", "Bravo\n\nBravo text.")
    documents = ingest("d", tmp_path).documents
    out = tmp_path / "documents.jsonl"
    write_documents(documents, out)
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert list(first) == ["id", "title", "text", "source"]
    assert [(d.id, d.title, d.text) for d in load_documents(out)] == [
        ("a", "Alpha", "Alpha\n\nAlpha text."), ("sub/b", "Bravo", "Bravo\n\nBravo text.")]
    assert ingest(str(out), tmp_path).documents == documents  # sources kept on a re-read
    assert not list(tmp_path.glob(".documents.jsonl.*"))  # no temp file left behind


def test_missing_source_and_empty_glob_name_what_was_looked_for(tmp_path):
    with pytest.raises(DocumentsError, match=r"^docs: not found \(looked for .*docs\)"):
        ingest("docs", tmp_path)
    (tmp_path / "kb").mkdir()
    with pytest.raises(DocumentsError, match=r"kb/\*\*/\*\.pdf: the glob matches no file"):
        ingest("kb/**/*.pdf", tmp_path)


def test_empty_folder_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / ".DS_Store", "hidden")
    with pytest.raises(DocumentsError, match=r"empty: no files in .*hidden files and folders"):
        ingest("empty", tmp_path)


def test_folder_of_unreadable_files_names_the_count_the_reasons_and_the_fix(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    write_drawing_pdf(folder / "scan.pdf")
    for i in range(6):
        (folder / f"sheet{i}.xlsx").write_bytes(b"PK")
    with pytest.raises(DocumentsError) as caught:
        ingest("d", tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{folder}: no document could be read from 7 files:")
    assert f"scan.pdf: {NO_TEXT_LAYER}" in message
    assert "sheet0.xlsx: unsupported type .xlsx" in message
    assert "... and 2 more" in message
    assert "convert the files" in message and "run OCR" in message


def test_a_folder_whose_name_looks_like_a_glob_is_read_as_a_folder(tmp_path):
    write(tmp_path / "notes [old]" / "n.txt", "Old notes.")
    assert ingest("notes [old]", tmp_path).documents[0].id == "n"
