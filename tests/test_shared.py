"""Shared containers: list and dict behaviour, pickling into workers, lifetime, share_dataset."""

from __future__ import annotations

import collections
import copy
import gc
import itertools
import marshal
import multiprocessing
import os
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from batchloader import (
    LargeContainer,
    SharedDict,
    SharedList,
    find_large_containers,
    share_dataset,
)
from batchloader import _sharing as shared_module
from batchloader._shared_buffer import stable_hash
from tests import strategies as sst

RECORDS = [{"id": i, "name": f"img/{i:05d}.jpg", "box": [i, 0.5, 3.25, 4.0]} for i in range(50)]
BY_NAME = {record["name"]: record for record in RECORDS}


def memory_of(container: Any) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of the memory file a container maps."""
    return container._buffer.identity()


def mapped_memfds() -> set[int]:
    """Inodes of the batchloader memory files this process maps, from /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        lines = [line.split() for line in maps if "memfd:batchloader-" in line]
    return {int(fields[4]) for fields in lines}


class Annotated(torch.utils.data.Dataset):
    """A dataset keeping its annotations in Python containers, as detection datasets do."""

    def __init__(self, records: Any, classes: Any = ("cat", "dog")) -> None:
        self.records = records
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Any:
        return self.records[i]


# --- a list, read like a list ---------------------------------------------------


@given(st.lists(sst.shared_values(), max_size=12), st.data())
def test_indexing_matches_the_list(items, data):
    """Every index, negative and out of range included, reads what the list reads or raises IndexError."""
    with SharedList(items) as shared:
        for _ in range(5):
            index = data.draw(sst.container_indices(len(items)))
            if -len(items) <= index < len(items):
                assert shared[index] == items[index]
            else:
                with pytest.raises(IndexError, match=f"index {index} is out of range"):
                    shared[index]


@given(st.lists(sst.shared_values(), max_size=12), st.data())
def test_slicing_matches_the_list(items, data):
    """A slice, any start, stop and step, is a plain list equal to the list's slice."""
    with SharedList(items) as shared:
        for _ in range(5):
            where = data.draw(sst.container_slices(len(items)))
            got = shared[where]
            assert type(got) is list and got == items[where]


@given(st.lists(sst.shared_values(), max_size=12))
def test_length_and_iteration_match_the_list(items):
    """len(), iteration and reversed() give the list's items in the list's order."""
    with SharedList(items) as shared:
        assert len(shared) == len(items)
        assert list(shared) == items
        assert list(reversed(shared)) == items[::-1]


@given(st.lists(sst.shared_values(), max_size=12))
def test_equal_to_the_list_the_tuple_and_a_shared_copy(items):
    """A SharedList equals its list, the tuple of it, and another SharedList of the same items."""
    with SharedList(items) as shared, SharedList(items) as again:
        assert shared == items and items == shared
        assert shared == tuple(items)
        assert shared == again
        assert shared != [*items, 0]
        assert shared != set()  # not a sequence: not equal, as for a list


@given(st.lists(st.integers(-5, 5), max_size=12), st.integers(-7, 7))
def test_membership_index_and_count_match_the_list(items, value):
    """``in``, index() and count() answer as the list does."""
    with SharedList(items) as shared:
        assert (value in shared) == (value in items)
        assert shared.count(value) == items.count(value)
        if value in items:
            assert shared.index(value) == items.index(value)


def test_the_buffer_is_pickles_at_offsets():
    """Item i is the pickle between offsets i and i + 1 of one read-only byte buffer."""
    items = [(record["id"], record["name"]) for record in RECORDS]
    with SharedList(items) as shared:
        assert shared._buffer.encoding == "pickles"
        data, offsets = shared._buffer.data, shared._buffer.offsets
        assert data.readonly and not offsets.flags.writeable
        assert offsets[0] == 0 and offsets[-1] == len(data) and len(offsets) == len(items) + 1
        assert [pickle.loads(data[a:b]) for a, b in itertools.pairwise(offsets)] == items
        del data, offsets


def test_dicts_with_the_same_keys_are_stored_as_records():
    """A list of same-key dicts of plain values keeps each item's values once, marshalled."""
    with SharedList(RECORDS) as shared:
        assert shared._buffer.encoding == "records"
        data, offsets = shared._buffer.data, shared._buffer.offsets
        values = [marshal.loads(data[a:b]) for a, b in itertools.pairwise(offsets)]
        assert values == [tuple(record.values()) for record in RECORDS]
        assert shared == RECORDS and list(shared[0]) == ["id", "name", "box"]
        del data, offsets


def exactly(item: Any) -> bytes:
    """An item's pickle: equal for two items only if types, values (-0.0, bit for bit) and
    the sharing of objects inside them are equal."""
    return pickle.dumps(item, pickle.HIGHEST_PROTOCOL)


@given(sst.shared_records())
def test_records_come_back_exactly(records):
    """Whatever the encoding, each item comes back with the same types, values and sharing."""
    with SharedList(records) as shared:
        assert [exactly(item) for item in shared] == [exactly(item) for item in records]
        assert [exactly(shared[i]) for i in range(len(records))] == list(map(exactly, records))


LOOP: dict[str, Any] = {"id": 1}
LOOP["self"] = [LOOP]


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param({"name": "x", "box": [], "id": 9}, id="keys-in-another-order"),
        pytest.param({"id": 9, "name": "x"}, id="fewer-keys"),
        pytest.param({"id": np.int64(9), "name": "x", "box": []}, id="numpy-scalar"),
        pytest.param({"id": 9, "name": bytearray(b"x"), "box": []}, id="bytearray"),
        pytest.param({"id": 9, "name": "x", "box": [np.float32(1)]}, id="numpy-scalar-inside"),
        pytest.param(collections.OrderedDict(id=9, name="x", box=[]), id="dict-subclass"),
        pytest.param({"id": 9, "name": "x", "box": LOOP}, id="holds-a-cycle"),
    ],
)
def test_an_item_that_is_not_a_plain_record_makes_every_item_pickled(odd):
    """One item that marshal would not give back exactly (anywhere in the list) stores them all
    as pickles, and every item still comes back exactly."""
    items = [*RECORDS[:3], odd, *RECORDS[3:]]
    with SharedList(items) as shared:
        assert shared._buffer.encoding == "pickles"
        assert [exactly(item) for item in shared] == [exactly(item) for item in items]


def test_records_whose_value_types_differ_from_row_to_row_are_still_records():
    """Rows checked an item at a time (a None here, an int there; nested lists) read back exactly."""
    items = [
        {"id": i, "area": None if i % 3 else 1.5 * i, "poly": [[i, 0.5], [1, 2]] if i % 2 else []}
        for i in range(3000)
    ]
    with SharedList(items) as shared:
        assert shared._buffer.encoding == "records"
        assert [exactly(item) for item in shared] == [exactly(item) for item in items]


@pytest.mark.parametrize("where", [0, 1023, 1024, 2999])
def test_an_odd_value_in_any_part_of_a_long_list_makes_every_item_pickled(where):
    """Records are checked a part (1,024 items) at a time: a NumPy scalar in any part is found."""
    items = [{"id": i, "box": [float(i), 2.0]} for i in range(3000)]
    items[where] = {"id": where, "box": [np.float64(where), 2.0]}
    with SharedList(items) as shared:
        assert shared._buffer.encoding == "pickles"
        assert type(shared[where]["box"][0]) is np.float64 and shared == items


def test_a_record_keeps_objects_it_shares_shared():
    """Two values that are one list come back as one list, as pickle would give them."""
    box = [1.5, 2.0]
    with SharedList([{"a": box, "b": box}] * 2) as shared:
        assert shared._buffer.encoding == "records"
        item = shared[1]
        assert item["a"] is item["b"] and item == {"a": box, "b": box}


def nested(levels: int) -> list[Any]:
    """A list whose every level holds the level below three times: 3**levels paths, levels+1 lists."""
    value: list[Any] = []
    for _ in range(levels):
        value = [value, value, value]
    return value


def test_a_value_sharing_its_parts_is_checked_once_per_object():
    """Checking a record walks each object once, not each path to it (3**14 paths here)."""
    items = [{"id": 1, "parts": nested(14)}, {"id": 2, "parts": nested(3)}]
    with SharedList(items) as shared:
        assert shared._buffer.encoding == "records"
        assert [exactly(item) for item in shared] == [exactly(item) for item in items]


def test_a_value_nested_deeper_than_records_allow_is_pickled():
    """Past 16 levels a value is pickled (marshal's depth, and the check's, stay bounded)."""
    items = [{"id": 1, "parts": nested(40)}]
    with SharedList(items) as shared:
        assert shared._buffer.encoding == "pickles"
        assert exactly(shared[0]) == exactly(items[0])


def test_a_later_key_that_only_equals_a_str_keeps_its_type():
    """A key of another type that equals the first item's str key is pickled, not made a str."""
    items = [{"a": 1}, {collections.UserString("a"): 2}]
    with SharedList(items) as shared:
        assert shared._buffer.encoding == "pickles"
        assert type(next(iter(shared[1]))) is collections.UserString


def test_a_value_marshal_refuses_makes_every_item_pickled(monkeypatch):
    """marshal refuses a str or bytes of 2 GiB or more: such a record is pickled instead."""
    real = marshal.dumps

    def refuse_huge(values: Any, *args: Any) -> bytes:
        if "huge" in values:
            raise ValueError("unmarshallable object")
        return real(values, *args)

    monkeypatch.setattr(marshal, "dumps", refuse_huge)
    items = [{"id": 1, "name": "x"}, {"id": 2, "name": "huge"}]
    with SharedList(items) as shared:
        assert shared._buffer.encoding == "pickles" and shared == items


def test_items_from_an_iterator_are_pickled():
    """An iterator cannot be read twice (needed if an item turns out not to be a record)."""
    with SharedList(iter(RECORDS)) as shared:
        assert shared._buffer.encoding == "pickles" and shared == RECORDS


def test_tuple_items_come_back_as_tuples():
    """Items keep their types: tuples, sets, bytes, NumPy arrays."""
    items = [(1, 2), {3}, b"x", np.arange(3)]
    with SharedList(items) as shared:
        assert shared[0] == (1, 2) and shared[1] == {3} and shared[2] == b"x"
        assert np.array_equal(shared[3], items[3])


def test_each_read_is_a_fresh_copy():
    """Changing an item that was read does not change the container."""
    with SharedList(RECORDS) as shared:
        item = shared[3]
        item["id"] = -1
        item["box"].append(0)
        assert shared[3] == RECORDS[3]
        assert shared[3] is not shared[3]


def test_bad_index_types_raise_type_error():
    """A str or float index raises TypeError naming the type, as a list does."""
    with SharedList([1, 2]) as shared:
        with pytest.raises(TypeError, match="indices must be integers or slices, not str"):
            shared["0"]
        with pytest.raises(TypeError, match="not float"):
            shared[1.0]


def test_indices_of_other_int_types_work():
    """NumPy integers, torch scalars and bools index like ints."""
    with SharedList([10, 11, 12]) as shared:
        assert shared[np.int64(-1)] == 12
        assert shared[torch.tensor(1)] == 11
        assert shared[True] == 11


def test_it_cannot_be_changed():
    """Item assignment and deletion raise TypeError; there is no append."""
    with SharedList([1, 2]) as shared:
        with pytest.raises(TypeError, match="does not support item assignment"):
            shared[0] = 5
        with pytest.raises(TypeError):
            del shared[0]
        assert not hasattr(shared, "append")


def test_it_is_unhashable_like_a_list():
    """Equal by value, so unhashable."""
    with SharedList([1]) as shared, pytest.raises(TypeError, match="unhashable"):
        hash(shared)


def test_repr_is_short():
    """The repr names the type and length and shows the first three items, shortened."""
    with SharedList([{"name": "x" * 100}, 2, 3, 4]) as shared:
        text = repr(shared)
    assert text.startswith("SharedList([{'name': 'xxxx") and text.endswith(", 2, 3, ...], len=4)")
    assert len(text) < 120
    assert repr(shared) == "SharedList(<closed>, len=4)"


def test_an_unpicklable_item_is_named():
    """An item that cannot be pickled raises TypeError naming its index and type."""
    with pytest.raises(TypeError, match=r"item 2 \(of type function\) cannot be pickled"):
        SharedList([1, 2, lambda: 3])


def test_any_iterable_is_taken():
    """A generator, a range and a NumPy object array build the same list."""
    expected = [0, 1, 2, 3]
    array = np.empty(4, dtype=object)
    array[:] = expected
    for source in ((i for i in range(4)), range(4), array):
        with SharedList(source) as shared:
            assert shared == expected


# --- a dict, read like a dict ---------------------------------------------------


@given(st.dictionaries(sst.shared_keys(), sst.shared_values(), max_size=12), st.data())
def test_lookups_match_the_dict(mapping, data):
    """``[]``, get() and ``in`` answer as the dict does, for stored and absent keys."""
    with SharedDict(mapping) as shared:
        probes = [*mapping, *data.draw(st.lists(sst.shared_keys(), max_size=5))]
        for key in probes:
            assert (key in shared) == (key in mapping)
            assert shared.get(key, "absent") == mapping.get(key, "absent")
            if key in mapping:
                assert shared[key] == mapping[key]
            else:
                with pytest.raises(KeyError):
                    shared[key]


@given(st.dictionaries(sst.shared_keys(), sst.shared_values(), max_size=12))
def test_keys_values_and_items_keep_the_dicts_order(mapping):
    """Iteration, keys(), values() and items() give the dict's entries in its order."""
    with SharedDict(mapping) as shared:
        assert len(shared) == len(mapping)
        assert list(shared) == list(mapping)
        assert list(shared.keys()) == list(mapping.keys())
        assert list(shared.values()) == list(mapping.values())
        assert list(shared.items()) == list(mapping.items())


@given(st.dictionaries(sst.shared_keys(), sst.shared_values(), max_size=12))
def test_equal_to_the_dict_and_a_shared_copy(mapping):
    """A SharedDict equals its dict, any equal mapping, and another SharedDict of it."""
    with SharedDict(mapping) as shared, SharedDict(mapping) as again:
        assert shared == mapping and mapping == shared
        assert shared == again
        assert shared != {**mapping, "another key": 1}
        assert shared != list(mapping)


@given(sst.shared_keys())
def test_equal_keys_hash_equally(key):
    """The stable hash agrees for keys that compare equal (1, 1.0, True; a tuple and its twin)."""
    twin = pickle.loads(pickle.dumps(key))
    assert stable_hash(twin) == stable_hash(key)
    if isinstance(key, int) and not isinstance(key, bool):
        assert stable_hash(float(key)) == stable_hash(key) or float(key) != key


def test_numbers_that_compare_equal_are_one_key():
    """As in a dict, 1.0 and True find the key 1, and NumPy integers find ints."""
    with SharedDict({1: "one", "a": "letter", (2, "b"): "pair"}) as shared:
        assert shared[1.0] == shared[True] == shared[np.int64(1)] == "one"
        assert shared[(2.0, "b")] == "pair"
        assert shared[np.str_("a")] == "letter"


def test_pairs_build_a_dict():
    """An iterable of pairs builds the dict that dict() would, later duplicates winning."""
    with SharedDict([("a", 1), ("b", 2), ("a", 3)]) as shared:
        assert shared == {"a": 3, "b": 2} and list(shared) == ["a", "b"]


def test_unhashable_keys_raise_type_error():
    """Looking up a list raises TypeError, as a dict does."""
    with SharedDict({"a": 1}) as shared, pytest.raises(TypeError, match="unhashable type: 'list'"):
        shared[["a"]]


def test_missing_key_error_is_the_key():
    """KeyError carries the missing key, as a dict's does."""
    with SharedDict({"a": 1}) as shared, pytest.raises(KeyError) as error:
        shared["b"]
    assert error.value.args == ("b",)


def test_dict_cannot_be_changed():
    """Item assignment raises TypeError; there is no update or pop."""
    with SharedDict({"a": 1}) as shared:
        with pytest.raises(TypeError, match="does not support item assignment"):
            shared["a"] = 2
        assert not hasattr(shared, "update") and not hasattr(shared, "pop")


def test_dict_repr_is_short():
    """The repr names the type and length and shows the first three entries."""
    with SharedDict({i: str(i) for i in range(10)}) as shared:
        assert repr(shared) == "SharedDict({0: '0', 1: '1', 2: '2', ...}, len=10)"


def test_an_unpicklable_value_is_named_by_its_key():
    """A value that cannot be pickled raises TypeError naming its key."""
    with pytest.raises(
        TypeError, match=r"the value of key 'f' \(of type function\) cannot be pickled"
    ):
        SharedDict({"a": 1, "f": lambda: 2})


def test_many_keys_are_all_found():
    """Among 20,000 keys, each is found and a missing one is not."""
    mapping = {f"key-{i}": i for i in range(20_000)}
    with SharedDict(mapping) as shared:
        assert all(shared[key] == value for key, value in mapping.items())
        assert "key-20000" not in shared


# --- pickling and processes -------------------------------------------------------


def test_pickling_sends_a_handle_not_the_items():
    """A pickled container is a few hundred bytes and maps the same memory when loaded."""
    with SharedList(RECORDS * 100) as shared:
        data = pickle.dumps(shared)
        assert len(data) < 500 < shared.nbytes
        with pickle.loads(data) as copy:
            assert copy == shared and memory_of(copy) == memory_of(shared)


def test_each_copy_closes_on_its_own():
    """Closing the original leaves an unpickled copy readable, and the reverse."""
    shared = SharedDict(BY_NAME)
    copy = pickle.loads(pickle.dumps(shared))
    shared.close()
    assert copy["img/00007.jpg"] == RECORDS[7]
    copy.close()
    with pytest.raises(ValueError, match="closed"):
        shared["img/00007.jpg"]


def test_unpickling_after_the_sender_closed_it_is_explained():
    """A handle whose container was closed before it was loaded raises OSError saying so."""
    shared = SharedList([1, 2, 3])
    data = pickle.dumps(shared)
    shared.close()
    with pytest.raises(OSError, match="keep"):
        pickle.loads(data)


def test_a_closed_container_cannot_be_pickled():
    """Pickling a closed container raises the closed error rather than sending a dead handle."""
    shared = SharedList([1])
    shared.close()
    with pytest.raises(ValueError, match="SharedList is closed"):
        pickle.dumps(shared)


def _read_in_child(conn: Any, shared_list: SharedList, shared_dict: SharedDict) -> None:
    """In a worker: read every item, look up keys, report what memory is mapped."""
    conn.send(
        {
            "items": list(shared_list),
            "lookups": [shared_dict[name] for name in reversed(list(BY_NAME))],
            "memory": (memory_of(shared_list), memory_of(shared_dict)),
            "maps": mapped_memfds(),
        }
    )
    conn.close()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_worker_reads_the_same_memory(method):
    """A fork, spawn or forkserver worker reads equal items from the very memory file of its parent."""
    context = multiprocessing.get_context(method)
    with SharedList(RECORDS) as records, SharedDict(BY_NAME) as by_name:
        receiver, sender = context.Pipe(duplex=False)
        worker = context.Process(target=_read_in_child, args=(sender, records, by_name))
        worker.start()
        sender.close()
        got = receiver.recv()
        worker.join(30)
        assert worker.exitcode == 0
        assert got["items"] == RECORDS
        assert got["lookups"] == RECORDS[::-1]
        assert got["memory"] == (memory_of(records), memory_of(by_name))
        assert {memory_of(records)[1], memory_of(by_name)[1]} <= got["maps"]


def _identity_and_sum(shared: SharedList) -> tuple[tuple[int, int], int]:
    return memory_of(shared), sum(shared)


def test_a_pool_task_opens_the_senders_memory():
    """Sent with a task (not at start-up), a container reopens the sender's memory file."""
    with SharedList(range(1000)) as shared:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            memory, total = pool.apply(_identity_and_sum, (shared,))
        assert memory == memory_of(shared) and total == sum(range(1000))


# --- lifetime ---------------------------------------------------------------------


def test_nothing_is_put_in_dev_shm():
    """The memory is an anonymous memory file: no file in /dev/shm has its inode."""
    with SharedList(RECORDS) as shared:
        copy = pickle.loads(pickle.dumps(shared))
        fd = shared._buffer._fd
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:batchloader-SharedList")
        inode = memory_of(shared)[1]
        in_shm = {os.stat(os.path.join("/dev/shm", name)).st_ino for name in os.listdir("/dev/shm")}
        assert inode not in in_shm
        copy.close()


def test_the_memory_is_sealed_read_only():
    """Even opened for writing through /proc, the memory file refuses writes."""
    with SharedList([1, 2, 3]) as shared:
        fd = os.open(f"/proc/self/fd/{shared._buffer._fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.pwrite(fd, b"x", 70)
        finally:
            os.close(fd)
        assert list(shared) == [1, 2, 3]


def test_close_then_reading_raises():
    """After close(), reads, slices and iteration raise ValueError; len() still answers."""
    shared = SharedList([1, 2, 3])
    shared.close()
    shared.close()  # idempotent
    assert shared.closed and len(shared) == 3
    for read in (lambda: shared[0], lambda: shared[:2], lambda: list(shared), lambda: 1 in shared):
        with pytest.raises(ValueError, match="this SharedList is closed"):
            read()


def test_a_closed_read_names_the_closing_alone():
    """The closed error of a read is not chained to the internal error that detected it."""
    shared = SharedList(RECORDS)
    shared.close()
    with pytest.raises(ValueError, match="this SharedList is closed") as caught:
        shared[0]
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_copy_closed_closes_the_original_with_the_same_error():
    """copy.copy shares the memory: closing the copy makes the original's reads say closed."""
    shared = SharedList(RECORDS)
    copy.copy(shared).close()
    with pytest.raises(ValueError, match="this SharedList is closed"):
        shared[0]


def test_dict_close_then_lookup_raises():
    """After close(), lookups and iteration of a SharedDict raise ValueError."""
    with SharedDict({"a": 1}) as shared:
        pass
    assert shared.closed
    for read in (lambda: shared["a"], lambda: "a" in shared, lambda: list(shared.items())):
        with pytest.raises(ValueError, match="this SharedDict is closed"):
            read()


def test_close_unmaps_and_closes_the_descriptor():
    """close() removes the mapping from /proc/self/maps and closes the memory file's descriptor."""
    shared = SharedList(RECORDS)
    fd, inode = shared._buffer._fd, memory_of(shared)[1]
    assert inode in mapped_memfds()
    shared.close()
    assert inode not in mapped_memfds()
    assert not os.path.exists(f"/proc/self/fd/{fd}") or os.fstat(fd).st_ino != inode


def test_garbage_collection_closes_it():
    """A container nobody references is unmapped, without close()."""
    shared = SharedDict(BY_NAME)
    inode = memory_of(shared)[1]
    del shared
    gc.collect()
    assert inode not in mapped_memfds()


def test_a_view_held_past_close_keeps_the_memory_until_dropped():
    """close() with a NumPy view of the offsets still held leaves that view readable."""
    shared = SharedList([b"a", b"bb"])
    offsets = shared._buffer.offsets
    inode = memory_of(shared)[1]
    shared.close()
    assert offsets.tolist()[0] == 0 and len(offsets) == 3
    del offsets
    gc.collect()
    assert inode not in mapped_memfds()


# --- share_dataset and find_large_containers ---------------------------------------


def test_share_dataset_replaces_exactly_the_large_containers():
    """Large containers become shared ones; small ones and other attributes stay the same objects."""
    dataset = Annotated(RECORDS)
    dataset.lookup = dict(BY_NAME)
    dataset.small = [1, 2]
    copy, replaced = share_dataset(dataset, min_items=len(RECORDS))
    assert isinstance(copy.records, SharedList) and copy.records == RECORDS
    assert isinstance(copy.lookup, SharedDict) and copy.lookup == BY_NAME
    assert copy.small is dataset.small and copy.classes is dataset.classes
    assert [(r.path, r.kind, r.items, r.estimated) for r in replaced] == [
        ("dataset.records", "list", 50, False),
        ("dataset.lookup", "dict", 50, False),
    ]
    assert replaced[0].nbytes == copy.records.nbytes


def test_share_dataset_never_changes_your_objects():
    """The user's dataset and the wrappers around it keep their attributes, same objects."""
    inner = Annotated(RECORDS)
    dataset = torch.utils.data.Subset(inner, list(range(10)))
    before = (dict(vars(dataset)), dict(vars(inner)))
    copy, _ = share_dataset(dataset, min_items=len(RECORDS))
    assert (vars(dataset), vars(inner)) == before
    assert all(vars(dataset)[k] is v for k, v in before[0].items())
    assert all(vars(inner)[k] is v for k, v in before[1].items())
    assert copy is not dataset and copy.dataset is not inner
    assert [copy[i] for i in range(10)] == [dataset[i] for i in range(10)]


def test_share_dataset_walks_through_torch_wrappers():
    """Subset's dataset and ConcatDataset's list of datasets are walked into, with their paths."""
    dataset = torch.utils.data.Subset(
        torch.utils.data.ConcatDataset([Annotated(RECORDS), Annotated(RECORDS[:5])]),
        list(range(0, 55, 2)),
    )
    copy, replaced = share_dataset(dataset, min_items=len(RECORDS))
    assert [r.path for r in replaced] == ["dataset.dataset.datasets[0].records"]
    assert isinstance(copy.dataset.datasets[0].records, SharedList)
    assert copy.dataset.datasets[1] is dataset.dataset.datasets[1]
    assert [copy[i] for i in range(28)] == [dataset[i] for i in range(28)]


@pytest.mark.parametrize("source", [list(range(60)), tuple(range(60)), dict.fromkeys(range(60))])
def test_a_container_dataset_is_itself_replaced(source):
    """A list, tuple or dict given as the dataset comes back shared and equal."""
    copy, replaced = share_dataset(source, min_items=60)
    assert isinstance(copy, SharedDict if isinstance(source, dict) else SharedList)
    assert copy == source and replaced[0].path == "dataset"


def test_object_arrays_of_one_dimension_only_are_replaced():
    """A 1-D NumPy object array becomes a SharedList; a 2-D one and numeric arrays stay."""
    flat = np.empty(60, dtype=object)
    flat[:] = [f"name-{i}" for i in range(60)]
    dataset = Annotated(RECORDS)
    dataset.records = flat
    dataset.grid = np.empty((60, 2), dtype=object)
    dataset.numbers = np.arange(1000)
    copy, replaced = share_dataset(dataset, min_items=60)
    assert [(r.path, r.kind) for r in replaced] == [("dataset.records", "numpy.ndarray[object]")]
    assert copy.records == list(flat)
    assert copy.grid is dataset.grid and copy.numbers is dataset.numbers


def test_share_dataset_leaves_other_containers_alone():
    """Subclasses (defaultdict, named tuples) and containers of tensors are not replaced."""
    dataset = Annotated([torch.zeros(2)] * 60)
    dataset.index = collections.defaultdict(list, {i: [i] for i in range(60)})
    copy, replaced = share_dataset(dataset, min_items=60)
    assert copy is dataset and replaced == []


def test_a_container_reached_twice_is_shared_once():
    """Two attributes holding one list get one SharedList, reported once."""
    dataset = Annotated(RECORDS)
    dataset.alias = dataset.records
    copy, replaced = share_dataset(dataset, min_items=len(RECORDS))
    assert copy.alias is copy.records and len(replaced) == 1


def test_an_unpicklable_container_is_named_by_its_path():
    """share_dataset raises TypeError naming the container and the item that cannot be pickled."""
    dataset = Annotated([*RECORDS, lambda: 0])
    with pytest.raises(TypeError, match=r"dataset.records \(list\) cannot be shared: item 50"):
        share_dataset(dataset, min_items=len(RECORDS))


def test_find_large_containers_uses_the_item_threshold():
    """A container with min_items items is large; one with one item fewer is not."""
    dataset = Annotated(list(range(100)))
    dataset.other = list(range(99))
    found = find_large_containers(dataset, min_items=100)
    assert [(f.path, f.kind, f.items, f.estimated) for f in found] == [
        ("dataset.records", "list", 100, True)
    ]


def test_the_default_thresholds_are_documented_values():
    """By default a container is large from 100,000 items or an estimated 64 MiB."""
    assert (shared_module.MIN_ITEMS, shared_module.MIN_BYTES) == (100_000, 64 << 20)
    dataset = Annotated(list(range(100_000)))
    dataset.other = list(range(99_999))
    assert [f.path for f in find_large_containers(dataset)] == ["dataset.records"]


def test_find_large_containers_uses_the_byte_estimate():
    """A few items that are big as Python objects are large by bytes, estimated within 2x."""
    dataset = Annotated(["x" * 100_000 for _ in range(20)])
    (found,) = find_large_containers(dataset, min_bytes=1_000_000)
    assert found.path == "dataset.records" and found.items == 20
    assert 2_000_000 / 2 < found.nbytes < 2_000_000 * 2
    assert find_large_containers(dataset, min_bytes=10_000_000) == []


def test_find_large_containers_finds_what_share_dataset_replaces():
    """The two agree on paths and kinds; find converts nothing."""
    dataset = torch.utils.data.ConcatDataset([Annotated(RECORDS), Annotated(RECORDS)])
    dataset.lookup = BY_NAME
    found = find_large_containers(dataset, min_items=50)
    _, replaced = share_dataset(dataset, min_items=50)
    assert [(f.path, f.kind, f.items) for f in found] == [
        (r.path, r.kind, r.items) for r in replaced
    ]
    assert isinstance(found[0], LargeContainer) and isinstance(dataset.datasets[0].records, list)


def test_a_dataset_without_large_containers_is_returned_as_is():
    """With nothing to replace, share_dataset returns the dataset itself and an empty report."""
    dataset = Annotated(RECORDS)
    assert share_dataset(dataset) == (dataset, [])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_thresholds_must_be_positive_ints(bad):
    """min_items and min_bytes other than positive ints raise ValueError naming them."""
    with pytest.raises(ValueError, match="min_items must be a positive int"):
        find_large_containers([], min_items=bad)
    with pytest.raises(ValueError, match="min_bytes must be a positive int"):
        share_dataset([], min_bytes=bad)


def test_a_shared_list_of_a_non_iterable_names_the_argument():
    """SharedList(5): a TypeError naming the argument, its value and its type."""
    with pytest.raises(
        TypeError, match=r"SharedList\(items\) takes an iterable, got items=5 of type int"
    ):
        SharedList(5)


def test_a_shared_dict_of_something_not_a_mapping_names_the_argument():
    """SharedDict([1, 2]): a TypeError naming the argument and what it needs."""
    with pytest.raises(
        TypeError,
        match=r"SharedDict\(mapping\) takes a mapping or an iterable of \(key, value\) pairs, got mapping=\[1, 2\]",
    ):
        SharedDict([1, 2])
