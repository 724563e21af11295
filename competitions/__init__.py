"""Competition plugins; importing this package registers every one of them."""
from competitions import amazon, fisheries, imagefolder  # noqa: F401
