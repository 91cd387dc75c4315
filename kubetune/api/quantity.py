"""Kubernetes resource quantities ("64Gi", "500m", "1e3"): their grammar and their value.

The spec model checks the grammar (`check_positive_quantity`, mirrored in the CRD by
CEL's `isQuantity`); the operator compares values (`parse_quantity`: /dev/shm must fit
in the memory limit). `kubernetes.utils.parse_quantity` does the same, but this
package must not import the Kubernetes client (`kubetune render` runs from the base
install, and importing the client costs the operator over a second at start).
"""

from __future__ import annotations

import re
from decimal import Decimal

# resource.Quantity's grammar: a number, then a binary (Ki..Ei) or decimal SI suffix
# (n, u, m, k, M..E) or a decimal exponent (e3, E-2).
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
_QUANTITY = re.compile(
    rf"^(?P<sign>[+-]?)(?P<number>{_NUMBER})(?P<suffix>([KMGTPE]i)|[numkMGTPE]|([eE][+-]?{_NUMBER}))?$"
)
QUANTITY_HINT = "must be a positive Kubernetes quantity, such as 64Gi, 500Mi or 8"

_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def check_positive_quantity(value: str) -> str:
    """`value` if it is a quantity greater than zero; ValueError (QUANTITY_HINT) otherwise."""
    match = _QUANTITY.match(value)
    if not match or match["sign"] == "-" or not re.search(r"[1-9]", match["number"]):
        raise ValueError(QUANTITY_HINT)
    return value


def parse_quantity(text: str) -> Decimal:
    """The value of a quantity: parse_quantity("64Gi") == 64 * 2**30."""
    match = _QUANTITY.match(text.strip())
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number = Decimal(match["sign"] + match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * (Decimal(2) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number * (Decimal(10) ** _DECIMAL[suffix])
    return number * (Decimal(10) ** Decimal(suffix[1:]))
