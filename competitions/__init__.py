"""Competition plugins; importing this package registers every one of them."""
from competitions import fisheries, imagefolder  # noqa: F401
