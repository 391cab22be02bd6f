"""The exceptions mechscope raises.

Every error a user can cause (a bad site, a model that cannot be found, an empty prompt) is a
`MechscopeError` whose message is one line that names the problem and the fix. The CLI prints that line
and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations


class MechscopeError(Exception):
    """Base class of every error mechscope raises on bad input."""


class ModelLoadError(MechscopeError):
    """A model or tokenizer could not be found or loaded."""


class ArchitectureError(MechscopeError):
    """The architecture map does not know, or could not discover, a part of the model."""


class SiteError(MechscopeError):
    """A site string is malformed, unknown, or out of range for this model."""


class PositionError(MechscopeError):
    """A positions argument cannot be applied to the current batch."""


class InputError(MechscopeError):
    """A prompt or tensor given to the model is unusable (empty, too long, wrong shape)."""


class HookNotFiredError(MechscopeError):
    """A hook registered for a site did not run during a forward pass."""


class InterventionError(MechscopeError):
    """An intervention cannot be applied at the site or with the value it was given."""


class ProvenanceError(ModelLoadError):
    """A saved object (direction, tuned lens) was made for another model than the one it is applied to."""


class WeightFileError(MechscopeError):
    """A checkpoint file is missing, truncated, corrupt or does not match what was expected."""


class ExportValidationError(MechscopeError):
    """A written result table failed its checks (row count, columns, missing values)."""


class MoEError(MechscopeError):
    """A mixture-of-experts analysis was asked of a model that has no experts."""


class DistributedError(MechscopeError):
    """A distributed job could not start (Ray missing, no cluster), or a worker failed past its retries."""
