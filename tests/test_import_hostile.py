"""Import of hostile files: every good row is committed, every bad one is a reject with its line and
reason, a file that cannot be read at all is a clear error (no traceback), and the command's exit
code says whether anything was accepted."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lodestar.errors import InvalidInput
from lodestar.importer import import_files, import_movielens


def _result(summary, entity):
    """(summary of one entity, its reject rows)."""
    result = next(e for e in summary.entities if e.entity == entity)
    if not result.reject_file:
        return result, []
    with open(result.reject_file, encoding="utf-8") as fh:
        return result, [json.loads(line) for line in fh]


def _cli(settings, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "LODESTAR_DATA_DIR": str(settings.data_dir), "LODESTAR_EMBED_MODEL": "hashing-64"}
    return subprocess.run([sys.executable, "-m", "lodestar.cli", *args], check=False, env=env, text=True, timeout=120,
                          **kwargs)


# -- text that UTF-8 cannot store --------------------------------------------------------------------
def test_lone_surrogate_rejects_its_row_and_the_good_rows_are_committed(settings, store, tmp_path):
    store.create_tenant("acme")
    path = tmp_path / "items.jsonl"
    # Written as JSON escapes, as a file would hold them: json.loads accepts them, UTF-8 cannot store them.
    path.write_text("\n".join([
        json.dumps({"id": "a", "title": "Good"}),
        '{"id": "b", "title": "bad \\ud800 half"}',
        '{"id": "c", "attributes": {"brand": ["ok", "\\udfff"]}}',
        '{"id": "d", "\\ud800": 1}',
        '{"id": "e", "title": "an emoji \\ud83d\\ude00, both halves"}',
    ]) + "\n", encoding="ascii")
    summary = import_files(store, settings, "acme", {"items": path})
    result, rejects = _result(summary, "items")
    assert (result.accepted, result.rejected) == (2, 3)
    assert [r["line"] for r in rejects] == [2, 3, 4]
    assert rejects[0]["reason"].startswith("title holds the lone surrogate \\ud800 at character 5")
    assert rejects[1]["reason"].startswith("attributes.brand[1] holds the lone surrogate \\udfff")
    assert rejects[2]["reason"].startswith("a field name holds the lone surrogate \\ud800")
    assert rejects[0]["row"] == {"id": "b", "title": "bad \ud800 half"}
    assert store.get_item("acme", "a")["title"] == "Good"
    assert store.get_item("acme", "e")["title"] == "an emoji \U0001f600, both halves"
    assert store.get_item("acme", "b") is None

    again = import_files(store, settings, "acme", {"items": path})
    result, rejects = _result(again, "items")
    assert (result.accepted, result.changed, result.rejected) == (2, 0, 3)
    assert store.count("acme", "items") == 2


def test_bytes_that_are_not_utf8_reject_their_line_and_the_rest_imports(settings, store, tmp_path):
    store.create_tenant("acme")
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_bytes(b'{"id": "a"}\n{"id": "b", "title": "caf\xe9"}\n{"id": "c"}\n')
    result, rejects = _result(import_files(store, settings, "acme", {"items": jsonl}), "items")
    assert (result.accepted, result.rejected) == (2, 1)
    assert rejects == [{
        "line": 2,
        "reason": "the line is not UTF-8 text (byte 0xe9 at column 26): save the file as UTF-8",
        "row": '{"id": "b", "title": "caf\\xe9"}',
    }]

    users = tmp_path / "users.csv"
    users.write_bytes(b'\xef\xbb\xbfid,attributes\nu1,\nu2,"{""city"": ""K\xf6ln""}"\nu3,\n')  # with a UTF-8 BOM
    result, rejects = _result(import_files(store, settings, "acme", {"users": users}), "users")
    assert (result.accepted, result.rejected) == (2, 1)
    assert rejects[0]["line"] == 3
    assert rejects[0]["reason"] == "attributes is not UTF-8 text (byte 0xf6 at character 12): save the file as UTF-8"
    assert store.count("acme", "users") == 2 and store.count("acme", "items") == 2


def test_movielens_with_a_byte_that_is_not_utf8_loses_only_that_movie(settings, store, tmp_path):
    store.create_tenant("ml")
    (tmp_path / "movies.csv").write_bytes(b"movieId,title,genres\n1,Am\xe9lie (2001),Romance\n2,Heat (1995),Action\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,4.0,964982703\n")
    summary = import_movielens(store, settings, "ml", tmp_path)
    result, rejects = _result(summary, "items")
    assert (result.accepted, result.rejected) == (1, 1)
    assert rejects[0]["line"] == 2 and "byte 0xe9" in rejects[0]["reason"]
    assert store.get_item("ml", "2")["title"] == "Heat (1995)"


# -- files that are not what their extension says ----------------------------------------------------
def test_a_file_that_is_not_text_or_not_parquet_is_a_clear_error_before_anything_is_imported(settings, store, tmp_path):
    store.create_tenant("acme")
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "a"}) + "\n")
    compressed = tmp_path / "events.jsonl"
    compressed.write_bytes(gzip.compress(b'{"user_id": "u", "item_id": "a", "type": "view", "ts": 1700000000}\n'))
    binary = tmp_path / "users.csv"
    binary.write_bytes(b"id\n" + bytes(range(256)) * 4)
    garbage = tmp_path / "users.parquet"
    garbage.write_bytes(b"this is not parquet\n" * 10)

    with pytest.raises(InvalidInput, match=r"events\.jsonl is gzip-compressed: decompress it first"):
        import_files(store, settings, "acme", {"items": items, "events": compressed})
    with pytest.raises(InvalidInput, match=r"users\.csv is not a text file \(it holds NUL bytes\)"):
        import_files(store, settings, "acme", {"items": items, "users": binary})
    with pytest.raises(InvalidInput, match=r"users\.parquet is not a readable Parquet file .*write it again"):
        import_files(store, settings, "acme", {"items": items, "users": garbage})
    assert store.count("acme", "items") == 0  # the good items file waited for the others to be checked


def test_cli_prints_an_error_and_exits_2_for_a_binary_jsonl_or_a_garbage_parquet(settings, store, tmp_path):
    store.create_tenant("acme")
    binary = tmp_path / "items.jsonl"
    binary.write_bytes(bytes(range(256)) * 8)
    garbage = tmp_path / "items.parquet"
    garbage.write_bytes(b"PAR1 and then nothing useful")
    for path, message in ((binary, "is not a text file"), (garbage, "is not a readable Parquet file")):
        done = _cli(settings, "cdp", "import", "--tenant", "acme", "--items", str(path), capture_output=True)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: {path} {message}") and "Traceback" not in done.stderr


def test_a_parquet_row_group_that_cannot_be_decoded_costs_only_its_rows(settings, store, tmp_path):
    store.create_tenant("acme")
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"id": [f"u{i}" for i in range(1, 7)]}), path, row_group_size=3)
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + column.total_compressed_size] = b"\xab" * column.total_compressed_size
    path.write_bytes(bytes(data))

    result, rejects = _result(import_files(store, settings, "acme", {"users": path}), "users")
    assert (result.accepted, result.rejected) == (3, 3)
    assert [r["line"] for r in rejects] == [4, 5, 6]
    assert rejects[0]["reason"].startswith("row group 2 of the file cannot be decoded")
    assert store.count("acme", "users") == 3


# -- CSV quotes ----------------------------------------------------------------------------------
def test_an_unclosed_csv_quote_rejects_every_line_after_it_instead_of_swallowing_them(settings, store, tmp_path):
    store.create_tenant("acme")
    path = tmp_path / "items.csv"
    path.write_text('id,title\n1,One\n2,"Two, with a quote never closed\n3,Three\n\n4,Four\n')
    result, rejects = _result(import_files(store, settings, "acme", {"items": path}), "items")
    assert (result.accepted, result.rejected) == (1, 3)
    assert [(r["line"], r["row"]) for r in rejects] == [
        (3, '2,"Two, with a quote never closed'), (4, "3,Three"), (6, "4,Four"),
    ]
    assert rejects[0]["reason"].startswith("a quoted field opens in the row that starts on this line and is never closed")
    assert "close the quote" in rejects[0]["reason"]
    assert rejects[1]["reason"] == "not imported: it follows the quote left open on line 3"
    assert store.count("acme", "items") == 1 and store.get_item("acme", "2") is None


def test_an_unclosed_csv_quote_in_a_long_file_is_rejected_not_a_traceback(settings, store, tmp_path):
    store.create_tenant("acme")
    path = tmp_path / "items.csv"
    rows = [f"{n},Item number {n} with a long enough title to fill the field" for n in range(3, 4003)]
    path.write_text('id,title\n1,One\n2,"never closed\n' + "\n".join(rows) + "\n")
    assert path.stat().st_size > csv.field_size_limit()  # the csv module gives up before the end of the file
    result, rejects = _result(import_files(store, settings, "acme", {"items": path}), "items")
    assert (result.accepted, result.rejected) == (1, 4001)
    assert [r["line"] for r in rejects] == list(range(3, 4004))
    assert "field larger than field limit" in rejects[0]["reason"] and "close the quote" in rejects[0]["reason"]


def test_a_csv_line_with_a_field_too_long_to_read_costs_only_that_line(settings, store, tmp_path):
    store.create_tenant("acme")
    path = tmp_path / "items.csv"
    path.write_text(f"id,description\n1,short\n2,{'x' * (csv.field_size_limit() + 1)}\n3,short\n")
    result, rejects = _result(import_files(store, settings, "acme", {"items": path}), "items")
    assert (result.accepted, result.rejected) == (2, 1)
    assert rejects[0]["line"] == 3 and "field larger than field limit" in rejects[0]["reason"]
    assert store.get_item("acme", "3") is not None


def test_csv_quoted_fields_over_several_lines_still_import(settings, store, tmp_path):
    store.create_tenant("acme")
    path = tmp_path / "items.csv"
    path.write_text('id,description\n1,"two\nlines"\n2,"say ""hi"""\n3,5" screen\n4,"last, no newline\nat the end"')
    result, _ = _result(import_files(store, settings, "acme", {"items": path}), "items")
    assert (result.accepted, result.rejected) == (4, 0)
    assert store.get_item("acme", "1")["description"] == "two\nlines"
    assert store.get_item("acme", "2")["description"] == 'say "hi"'
    assert store.get_item("acme", "3")["description"] == '5" screen'
    assert store.get_item("acme", "4")["description"] == "last, no newline\nat the end"


# -- where the results go, and what the command says ---------------------------------------------
def test_imports_at_the_same_moment_keep_their_own_reject_files_and_summary(settings, store, tmp_path):
    store.create_tenant("acme")
    summaries = []
    for n in range(3):
        path = tmp_path / f"items{n}.jsonl"
        path.write_text(json.dumps({"id": f"ok{n}"}) + "\n" + json.dumps({"title": f"no id {n}"}) + "\n")
        summaries.append(import_files(store, settings, "acme", {"items": path}))
    directories = [Path(s.directory) for s in summaries]
    assert len(set(directories)) == 3
    assert sorted(directories, key=lambda d: d.name) == directories  # the names sort by time
    for n, (summary, directory) in enumerate(zip(summaries, directories, strict=True)):
        _, rejects = _result(summary, "items")
        assert [r["row"] for r in rejects] == [{"title": f"no id {n}"}]
        written = json.loads((directory / "summary.json").read_text())
        assert written["entities"][0]["source"] == str(tmp_path / f"items{n}.jsonl")


def test_cli_exit_code_is_1_when_every_row_was_rejected_and_0_when_some_were_accepted(settings, store, tmp_path):
    store.create_tenant("acme")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"title": "no id"}) + "\n" + json.dumps({"id": "x", "kind": "gadget"}) + "\n")
    done = _cli(settings, "cdp", "import", "--tenant", "acme", "--items", str(bad), capture_output=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "No row was accepted (2 rejected)" in done.stdout

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"id": "a"}) + "\n" + json.dumps({"title": "no id"}) + "\n")
    done = _cli(settings, "cdp", "import", "--tenant", "acme", "--items", str(mixed), capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rows were rejected; the accepted rows are committed" in done.stdout


@pytest.mark.parametrize("args", [["tenants", "list"], ["tenants", "list", "--json"]])
def test_cli_output_into_a_closed_pipe_ends_quietly(settings, args):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, as `| head` is after its lines
    try:
        done = _cli(settings, *args, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141
