from modelbay.core.stored_requests import LIST_LIMIT_MAX, every_page


def pages_of(rows: list[int]) -> tuple[list[int], list[int]]:
    offsets: list[int] = []

    def page(offset: int) -> list[int]:
        offsets.append(offset)
        return rows[offset : offset + LIST_LIMIT_MAX]

    return every_page(page), offsets


def test_every_row_is_read_once_across_pages() -> None:
    rows = list(range(2 * LIST_LIMIT_MAX + 7))
    found, offsets = pages_of(rows)
    assert found == rows
    assert offsets == [0, LIST_LIMIT_MAX, 2 * LIST_LIMIT_MAX]


def test_a_full_last_page_is_followed_by_one_empty_read() -> None:
    rows = list(range(LIST_LIMIT_MAX))
    found, offsets = pages_of(rows)
    assert found == rows and offsets == [0, LIST_LIMIT_MAX]


def test_no_rows_is_one_read() -> None:
    assert pages_of([]) == ([], [0])
