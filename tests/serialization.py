"""keras-hub's serialization check for the project's custom Keras objects."""

from __future__ import annotations

import inspect
import json

import keras


def _as_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def run_serialization_test(obj, not_saved: tuple[str, ...] = ()):
    """Check that ``obj`` saves and loads through its config; returns the revived object.

    - ``cls.from_config(obj.get_config())`` gives back the same config (compared as JSON);
    - every argument of ``cls.__init__`` is in the config, except ``not_saved`` (a config
      that drifts from ``__init__`` loses the argument silently), and layers, models and
      metrics take ``**kwargs`` (the base class's own config keys: name, dtype, ...);
    - ``keras.saving`` finds the class again by its registered name.
    """
    cls = type(obj)
    config = obj.get_config()
    revived = cls.from_config(config)
    assert _as_json(revived.get_config()) == _as_json(config)
    parameters = inspect.signature(cls.__init__).parameters.values()
    arguments = [p.name for p in parameters
                 if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    if isinstance(obj, (keras.layers.Layer, keras.metrics.Metric)):
        assert any(p.kind == p.VAR_KEYWORD for p in parameters), f"{cls.__name__}: no **kwargs"
    missing = set(arguments) - set(config) - set(not_saved)
    assert not missing, f"{cls.__name__}.get_config() leaves out {sorted(missing)}"
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(again) is cls
    assert _as_json(again.get_config()) == _as_json(config)
    return revived
