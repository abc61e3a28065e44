"""The reference store: exact keys, byte limit, eviction order."""

import torch

from flashface_core.reference_cache import ReferenceStore, entry_bytes, tensor_fingerprint

ENTRY_BYTES = 4 * 100  # one float32 tensor of 100 values


def entry(value):
    return {"block": torch.full((100,), float(value))}


def test_fingerprint_changes_with_values_dtype_and_shape():
    t = torch.arange(6.0)
    assert tensor_fingerprint(t) == tensor_fingerprint(t.clone())
    bumped = t.clone()
    bumped[3] = torch.nextafter(bumped[3], torch.tensor(10.0))  # one ulp
    others = [bumped, t.double(), t.reshape(2, 3), t[:5]]
    assert len({tensor_fingerprint(x) for x in [t, *others]}) == 1 + len(others)


def test_hit_needs_same_identity_and_timestep():
    store = ReferenceStore(10 * ENTRY_BYTES)
    store.put("a", 999.0, entry(1))
    assert store.get("a", 999.0)["block"][0] == 1
    assert store.get("a", 998.0) is None and store.get("b", 999.0) is None
    assert (store.hits, store.misses, store.nbytes) == (1, 2, ENTRY_BYTES)


def test_least_recently_used_identity_is_evicted_first_oldest_step_first():
    store = ReferenceStore(4 * ENTRY_BYTES)
    for t in (3.0, 2.0):
        store.put("a", t, entry(t))
        store.put("b", t, entry(t))
    store.get("a", 3.0)  # b is now the least recently used identity
    store.put("c", 1.0, entry(1))
    assert store.get("b", 3.0) is None  # b's first step went first
    assert store.get("b", 2.0) is not None and store.get("a", 3.0) is not None and store.get("a", 2.0) is not None
    assert store.nbytes == 4 * ENTRY_BYTES <= store.limit_bytes


def test_a_run_longer_than_the_limit_keeps_its_first_steps():
    """Evicting the run's own oldest step would leave nothing for the next run (timesteps come in order)."""
    store = ReferenceStore(3 * ENTRY_BYTES)
    steps = [999.0, 749.0, 499.0, 249.0, 0.0]
    for t in steps:
        assert store.get("a", t) is None
        store.put("a", t, entry(t))
        assert store.get("a", t)["block"][0] == t  # the step in use is kept even over the limit
    # The first three fit; of the rest only the step stored last is still there.
    assert [store.get("a", t) is not None for t in steps] == [True, True, True, False, True]
    assert store.nbytes == 3 * ENTRY_BYTES


def test_entry_larger_than_the_limit_is_only_kept_for_its_step():
    store = ReferenceStore(ENTRY_BYTES - 1)
    store.put("a", 1.0, entry(1))
    assert store.get("a", 1.0) is not None and store.nbytes == 0 and store.entries() == 0
    store.put("a", 2.0, entry(2))
    assert store.get("a", 1.0) is None


def test_clear_and_disabled():
    store = ReferenceStore(10 * ENTRY_BYTES)
    store.put("a", 1.0, entry(1))
    store.clear()
    assert store.get("a", 1.0) is None and store.nbytes == 0
    assert not ReferenceStore(0).enabled and entry_bytes(entry(0)) == ENTRY_BYTES
