"""The exception hierarchy of msmodelslim.

Every error the toolkit raises on purpose derives from :class:`ModelslimError`. Where the original msModelSlim
raised a built-in type (``ValueError``, ``TypeError``), the matching class here derives from that built-in too, so
``except ValueError`` keeps working.
"""


class ModelslimError(Exception):
    """Base class of every msmodelslim error.

    ``code`` is a stable number per error kind; ``str()`` gives ``"Code: <code>, Message: <message>"`` followed by a
    ``TIP`` line when one is set.
    """

    code = 100
    default_tip = ""

    def __init__(self, message="", tip=None):
        super().__init__(message)
        self.message = message
        self.tip = self.default_tip if tip is None else tip

    def __str__(self):
        text = f"Code: {self.code}, Message: {self.message}"
        if self.tip:
            text += f"\nTIP: {self.tip}"
        return text


class SchemaValidateError(ModelslimError, TypeError):
    """An argument has the wrong type (code 203, as in the original). Also a ``TypeError``."""

    code = 203
    default_tip = "Please check the type of the argument."


class CheckpointError(ModelslimError, ValueError):
    """A weight file or directory cannot be used: missing, empty, unsupported, corrupt or unsafe."""

    code = 301


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint needs arbitrary code to load; it is refused, never loaded unsafely."""

    code = 302
    default_tip = ("Convert the file to safetensors in an environment you trust, e.g. "
                   "safetensors.torch.save_file(torch.load(path, weights_only=False), 'model.safetensors').")


class AssetNotInstalledError(ModelslimError, ImportError):
    """A real model or data set is asked for, but the pip package that ships it is not installed."""

    code = 401


class SampleInputError(ModelslimError, RuntimeError, ValueError):
    """The model fails on the sample inputs it was given (the model's own error is chained). A ``RuntimeError``, as
    the original raised the model's error as it was, and a ``ValueError``, since the inputs are the argument at
    fault."""

    code = 502
    default_tip = ("Pass inputs the model accepts: model(inputs) for a Tensor, model(*inputs) for a list or tuple, "
                   "or CallParams(*args, **kwargs).")
