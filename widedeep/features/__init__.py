"""widedeep.features: the feature spec, its fitted FeatureSpace and the one transform.

``FeatureSpec`` (YAML, validated) -> fit (per-block partial statistics merged on the driver)
-> ``FeatureSpace`` (versioned JSON) whose ``transform`` turns raw columns into model inputs in
Ray Data and in serving alike.
"""

from widedeep.features.space import FeatureSpace, TableInfo
from widedeep.features.spec import FeatureSpec, load_spec, parse_spec

__all__ = ["FeatureSpace", "FeatureSpec", "TableInfo", "load_spec", "parse_spec"]
