"""The epoch scripts the reference replays, shared by the recorder and the checks.

Plain Python with no imports, so ``record_gluon.py`` runs it under MXNet's own
venv and ``tests/test_reference.py`` under batchloader's: both replay an epoch
the same way.
"""


def run_epoch(batches, step, as_list):
    """One epoch of ``batches`` (a batch sampler or loader) as ``step`` says.

    ``step`` is ``"full"``, ``"islice-len"`` (``list(islice(bs, len(bs)))``:
    it never asks for the batch after the last) or ``"abandon:K"`` (K batches,
    then the iterator is dropped). Returns ``[len before, len after the first
    batch (or None), the batches as lists]``.
    """
    len_before, len_after_first = len(batches), None
    if step == "full":
        limit = None
    elif step == "islice-len":
        limit = len_before
    elif step.startswith("abandon:"):
        limit = int(step.removeprefix("abandon:"))
    else:
        raise ValueError(f"unknown step {step!r} in the reference")
    taken = []
    iterator = iter(batches)
    while limit is None or len(taken) < limit:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        taken.append(as_list(batch))
        if len(taken) == 1:
            len_after_first = len(batches)
    del iterator  # an abandoned epoch's iterator is dropped here
    return [len_before, len_after_first, taken]
