"""Search spaces: schema (:mod:`.params`, :mod:`.schema`), validation (:mod:`.validate`) and the
Optuna conversion (:mod:`.distributions`, imported on its own so a space needs no Optuna)."""

from search.space.params import NAME_RE, ParamSpec
from search.space.schema import SearchSpace, load_space, space_from_dict
from search.space.validate import check_params, config_fields

__all__ = ["NAME_RE", "ParamSpec", "SearchSpace", "check_params", "config_fields", "load_space",
           "space_from_dict"]
