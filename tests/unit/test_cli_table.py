"""The CLI's plain-text tables and number formats."""

from __future__ import annotations

import pytest

from corral.cli.table import format_amount, format_bytes, format_table, format_used


def test_columns_are_as_wide_as_their_widest_cell() -> None:
    text = format_table(("ID", "STATUS"), [["a-long-id", "active"], ["b", "unreachable"]])
    assert text.splitlines() == [
        "ID         STATUS",
        "a-long-id  active",
        "b          unreachable",
    ]


def test_lines_have_no_trailing_spaces() -> None:
    text = format_table(("A", "B"), [["x", ""]])
    assert all(line == line.rstrip() for line in text.splitlines())


def test_headers_alone_when_there_are_no_rows() -> None:
    assert format_table(("A", "B"), []) == "A  B"


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="2 cells; expected 3"):
        format_table(("A", "B", "C"), [["x", "y"]])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (2, "2"),
        (0.5, "0.5"),
        (0.125, "0.125"),
        (1 / 3, "0.333"),
        (15869.5, "15869.5"),
        (-0.0001, "0"),
    ],
)
def test_amounts_keep_at_most_three_decimals(value: float, text: str) -> None:
    assert format_amount(value) == text


def test_used_over_total() -> None:
    assert format_used(0.5, 4) == "0.5/4"


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (12 * 1024 * 1024 + 300_000, "12.3 MiB"),
        (3 * 1024**3, "3.0 GiB"),
        (5 * 1024**4, "5.0 TiB"),
        (2 * 1024**5, "2.0 PiB"),
    ],
)
def test_bytes_in_binary_units(count: int, text: str) -> None:
    assert format_bytes(count) == text
