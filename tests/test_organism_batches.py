"""Length-bucketed training batches: every row once per epoch, little padding, random order."""

import numpy as np
import pytest
from datasets import Dataset

from rlhf_audit.organism.train import BucketedBatchSampler, row_lengths


def _padding(lengths, batches):
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return padded / sum(lengths[i] for b in batches for i in b)


def test_every_row_once_full_batches_first_and_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(40, 256, size=1003)
    s = BucketedBatchSampler(lengths, batch_size=16, seed=3)
    batches = s.batches(0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1003))
    assert list(s) == flat  # __iter__ yields the epoch's batches in order
    sizes = [len(b) for b in batches]
    assert all(n == 16 for n in sizes[:-1]) and sizes[-1] == 1003 % 16
    # a uniformly random batching of these lengths pads ~1.5x; bucketed batches barely
    perm = rng.permutation(1003)
    random_batches = [perm[k:k + 16].tolist() for k in range(0, 1003, 16)]
    assert _padding(lengths, random_batches) > 1.3
    assert _padding(lengths, batches) < 1.05


def test_batch_order_is_random_not_long_to_short_and_epochs_differ():
    lengths = np.arange(1600)
    s = BucketedBatchSampler(lengths, batch_size=16, seed=0)
    means = [np.mean([lengths[i] for i in b]) for b in s.batches(0)]
    # a chunk of 50 sorted batches, unshuffled, would be monotone within each chunk
    rises = np.mean(np.diff(means) > 0)
    assert 0.3 < rises < 0.7
    e0, e1 = s.batches(0), s.batches(1)
    assert e0 != e1
    assert BucketedBatchSampler(lengths, 16, seed=0).batches(0) == e0  # seeded
    assert list(s) == [i for b in e0 for i in b] and list(s) == [i for b in e1 for i in b]


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        BucketedBatchSampler([1, 2], batch_size=0, seed=0)


def test_row_lengths_as_the_collators_pad():
    sft = Dataset.from_dict({"input_ids": [[1, 2, 3], [4]]})
    assert row_lengths(sft) == [3, 1]
    dpo = Dataset.from_dict({"prompt_ids": [[1, 2], [3]], "chosen_ids": [[4], [5, 6, 7]],
                             "rejected_ids": [[8, 9, 10], [11]]})
    assert row_lengths(dpo) == [5, 4]
    rm = Dataset.from_dict({"chosen_ids": [[1, 2], [3]], "rejected_ids": [[4], [5, 6, 7]]})
    assert row_lengths(rm) == [2, 3]
    with pytest.raises(ValueError, match="input_ids"):
        row_lengths(Dataset.from_dict({"text": ["a"]}))


@pytest.mark.parametrize("bucket, lo, hi", [(False, 1.3, 9.0), (True, 1.0, 1.06)])
def test_the_organism_trainers_draw_bucketed_batches(tmp_path, bucket, lo, hi):
    """The SFT trainer the organism builds pads its batches as the setting says."""
    from trl import SFTConfig, SFTTrainer

    from rlhf_audit.organism import train as T
    from tests.tiny import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    rng = np.random.default_rng(1)
    texts = [" ".join(["word"] * int(n)) for n in rng.integers(5, 120, size=320)]
    s = T.organism_settings("test", bucket_batches=bucket)
    args = SFTConfig(**T._common_args(s, str(tmp_path), lr=1e-3, batch_size=16),
                     max_steps=1, max_length=256, packing=False)
    trainer = T._batches(SFTTrainer, s)(model=model, args=args, processing_class=tok,
                                        train_dataset=Dataset.from_dict({"text": texts}))
    pad = real = 0
    for batch in trainer.get_train_dataloader():
        pad += batch["attention_mask"].numel()
        real += int(batch["attention_mask"].sum())
    assert lo <= pad / real <= hi


def test_set_epoch_names_the_next_epoch():
    s = BucketedBatchSampler(np.arange(100), batch_size=8, seed=0)
    first = list(s)
    s.set_epoch(0)
    assert list(s) == first  # the same epoch again, not the next one
    assert list(s) == [i for b in s.batches(1) for i in b]
