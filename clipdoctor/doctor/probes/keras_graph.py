"""The Keras model's architecture facts as a measurement: `keras_graph`.

A Keras model is diagnosed through a torch wrapper (`interop.keras.KerasModule`), inside which
torch inspection (module types, torch.fx, RNN hooks) sees no Keras layer. The runner reads the
facts from the Keras graph once (`KerasAdapter.facts()`: per-frame pooling and random
augmentation inside TimeDistributed, last-step reads of a bidirectional sequence, the output
activation and the compiled loss, frozen layers) and keeps them in `Context.keras`; this probe
hands them to the checks, which stay framework-agnostic: a check that reads it learns whether
the model is a Keras model (None otherwise) and words its remedy in Keras terms. (Scripted
`Probes(values=...)` without it skip it; checks read it with `get(..., optional=True)`.)
"""

from __future__ import annotations

from clipdoctor.doctor.probes import Context, Probes, probe


@probe("keras_graph")
def keras_graph(ctx: Context, probes: Probes) -> dict | None:
    """The Keras facts of the diagnosed model (`Context.keras`); None for any other model
    (nothing is missing then, so it is not a skip: the report's list of measurements that
    could not be taken stays about real gaps)."""
    return dict(ctx.keras) if ctx.keras is not None else None
