"""Task builders, numpy helpers and method groups shared by several tests/methods files.

Imported as ``tests.methods._helpers`` (pytest's importlib mode makes ``tests`` a namespace
package; the leading underscore keeps pytest from collecting this module).
"""

import numpy as np
import torch

from fewclip import functional as F
from fewclip.task import FeatureSet, Task
from fewclip.testing import SyntheticWorld
from fewclip.testing.text_tower import ToyTextTower


def _clustered_task(counts, d, views, seed, val, dtype, *, shuffle, val_per_class):
    """Class means in ``d`` dimensions, support features around them (``counts`` per class,
    labels shuffled when ``shuffle``), ``views`` noisy views, ``val_per_class`` validation
    images a class and noisy unit text weights, drawn in that order from one generator."""
    c = len(counts)
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g, dtype=dtype)
    labels = torch.repeat_interleave(torch.arange(c), torch.tensor(counts))
    if shuffle:
        labels = labels[torch.randperm(len(labels), generator=g)]
    feats = 3 * (means[labels] + 0.7 * torch.randn(len(labels), d, generator=g, dtype=dtype))
    bank = feats + 0.2 * torch.randn(views, len(labels), d, generator=g, dtype=dtype)
    vy = torch.arange(c).repeat_interleave(val_per_class)
    vx = 3 * (means[vy] + 0.7 * torch.randn(len(vy), d, generator=g, dtype=dtype))
    text = F.l2_normalize(means + torch.randn(c, d, generator=g, dtype=dtype))
    return Task(
        [f"class {i}" for i in range(c)],
        text,
        FeatureSet(feats, labels, bank),
        FeatureSet(vx, vy) if val else None,
        text_tower=ToyTextTower(d, seed=seed),  # for the prompt learners (CoOp)
    )


def make_clustered_task(c=5, shots=4, d=16, views=3, seed=0, val=True, dtype=torch.float32):
    """Small clustered task, labels in class order, 2 validation images a class (the ``task``
    fixture of tests/methods/conftest.py)."""
    return _clustered_task([shots] * c, d, views, seed, val, dtype, shuffle=False, val_per_class=2)


def make_shuffled_task(
    c=5, shots=4, d=16, views=3, seed=0, val=True, dtype=torch.float32, per=None
):
    """Small clustered task, labels shuffled, 3 validation images a class; ``per`` gives
    unequal shots per class."""
    counts = per if per is not None else [shots] * c
    return _clustered_task(counts, d, views, seed, val, dtype, shuffle=True, val_per_class=3)


def one_view_task(seed, val=True):
    """5 classes × 4 images in 16 float64 dimensions with a single stored view (the features
    themselves), and 4 validation images a class: with one view and a batch of at least 20,
    an epoch of Tip-Adapter-F or APE-T is one full-batch step whatever the shuffling, so a plain
    optimiser loop reproduces it."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(5, 16, generator=g, dtype=torch.float64)
    labels = torch.arange(5).repeat_interleave(4)
    feats = 3 * (means[labels] + 0.7 * torch.randn(20, 16, generator=g, dtype=torch.float64))
    text = means + torch.randn(5, 16, generator=g, dtype=torch.float64)
    vx = 3 * (means[labels] + 0.7 * torch.randn(20, 16, generator=g, dtype=torch.float64))
    return Task(
        [f"c{i}" for i in range(5)],
        text,
        FeatureSet(feats, labels, feats[None]),
        FeatureSet(vx, labels) if val else None,
    )


def np_unit(x):
    """Rows of a numpy array scaled to unit L2 norm."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def separable_world_task(val="none"):
    """A CLIP-like world where zero-shot is poor (~35% on the support set) but the support
    set is linearly separable in 64 dimensions: a trained head should fit it exactly."""
    world = SyntheticWorld(10, 64, seed=0, gap=0.8, sep=0.2, spread=0.05, test_size=500)
    return world.calibrate(0.4).task(8, seed=1, views=2, val=val)


# GDA, ProKeR, LP++, ZS-LP and CLAP
GDA_PROKER_LPPP_CLAP = ["gda", "proker", "lp++", "zs-lp", "clap"]
# TaskRes, APE, APE-T, TIP-X and the cross-modal linear probe
TASKRES_APE_TIPX_CMLP = ["taskres", "ape", "ape-t", "tip-x", "cross-modal-lp"]


def resign_state(folder):
    """Record the checksum of ``folder``'s current ``state.safetensors`` in its config.json,
    as a buggy writer would have: only the checks of the content can catch an edit then."""
    import hashlib
    import json

    cfg = json.loads((folder / "config.json").read_text())
    cfg["state_sha256"] = hashlib.sha256((folder / "state.safetensors").read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(cfg))


def rewrite_state(folder, method, **changes):
    """Replace tensors in the state of a ``method`` saved in ``folder`` and record the new
    checksum, as a folder written by another (buggy) program would look: only the checks of
    the content (shapes, the load-time probe) can catch it."""
    from safetensors.torch import load_file, save_file

    path = folder / "state.safetensors"
    tensors = {**load_file(str(path)), **changes}
    save_file(tensors, str(path), metadata={"method": method})
    resign_state(folder)


def write_pickle(path):
    """A pickle file at ``path`` (its first byte is 0x80), as another library would save."""
    import pickle

    path.write_bytes(pickle.dumps({"weights": [1, 2]}, protocol=4))
    return path


def write_torch_save(path):
    """A file in ``torch.save``'s format at ``path``: a zip archive ("PK" first) holding a
    pickle. Written with zipfile, so that nothing is pickled by the test itself."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return path


def pickle_message(path, expected):
    """What fewclip says of a pickle or ``torch.save`` file at ``path`` where it ``expected``
    a saved folder (``file_not_folder_message``'s words)."""
    return (
        f"{path}: looks like a pickle / torch.save file; fewclip never loads pickle. "
        f"Expected {expected}"
    )
