"""The pure core of usync: routing, the table, the fold, and the decisions.

No I/O here: plain functions over msgspec Structs (the records of ``streams.contract``),
shared by the worker's stages and replay. tests/unit/test_architecture.py holds it to that.
"""

from streams.core.decide import (
    Decision,
    RetryWindow,
    SkipReason,
    Verdict,
    correction_needed,
    decide,
    LinkDrift,
    drift,
    drift_by_link,
    needing_correction,
    refused,
    rejected,
    retry_due,
)
from streams.core.http import HttpClass, classify_http, parse_retry_after
from streams.core.fold import FoldResult, LookupNeeded, fold, fold_by_link, fold_many
from streams.core.routing import SOURCE, TARGET, Routes, Side, compile_routes, routes, side_of
from streams.core.table import (
    Pending,
    Row,
    TableState,
    actual,
    as_dict,
    derived_index,
    desired,
    eligible,
    empty_state,
    index_key,
    row_index_keys,
    row_key,
    split_row_key,
)

__all__ = [
    "SOURCE", "TARGET", "Decision", "FoldResult", "HttpClass", "LookupNeeded", "Pending", "RetryWindow", "Routes", "Row",
    "LinkDrift", "Side", "SkipReason", "TableState", "Verdict", "actual", "as_dict", "classify_http",
    "compile_routes", "correction_needed", "decide", "derived_index", "desired", "drift", "drift_by_link", "eligible", "empty_state", "fold",
    "fold_by_link", "fold_many", "index_key", "needing_correction", "parse_retry_after", "refused", "rejected", "retry_due", "routes", "row_index_keys", "row_key",
    "side_of", "split_row_key",
]
