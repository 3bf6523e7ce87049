import uuid

from modelbay.core.row_ids import time_ordered_id


def test_ids_are_uuids_that_sort_in_the_order_they_were_made():
    ids = [time_ordered_id() for _ in range(10_000)]
    assert all(uuid.UUID(each).version == 7 for each in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # those made within one millisecond too
