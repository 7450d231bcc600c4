"""Perceived temperature (체감온도): the KMA summer formula over Stull's wet-bulb fit.

See docs/perceived-temperature.md.  The US heat index is deliberately not used: against
Korean thresholds it over-alerts by about 10 °C at 35 °C / 60 %.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

# Stull (2011) is fitted for these ranges; outside them the result is an extrapolation.
VALID_TEMPERATURE = (-20.0, 50.0)
VALID_HUMIDITY = (5.0, 99.0)

_ONE_DECIMAL = Decimal("0.1")


def wet_bulb_stull(t: float, rh: float) -> float:
    """Wet-bulb temperature in °C from air temperature (°C) and relative humidity (%)."""
    return float(
        t * math.atan(0.151977 * math.sqrt(rh + 8.313659))
        + math.atan(t + rh)
        - math.atan(rh - 1.676331)
        + 0.00391838 * rh**1.5 * math.atan(0.023101 * rh)
        - 4.686035
    )


def kma_summer_apparent(t: float, rh: float) -> float:
    """The KMA summer perceived temperature, unrounded."""
    tw = wet_bulb_stull(t, rh)
    return -0.2442 + 0.55399 * tw + 0.45535 * t - 0.0022 * tw**2 + 0.00278 * tw * t + 3.0


def in_valid_range(t: float, rh: float) -> bool:
    return (
        VALID_TEMPERATURE[0] <= t <= VALID_TEMPERATURE[1]
        and VALID_HUMIDITY[0] <= rh <= VALID_HUMIDITY[1]
    )


def perceived_temperature(temperature: Decimal, humidity: Decimal) -> Decimal | None:
    """The value to report, rounded to one decimal like the sensors do.

    Returns None outside the fit's valid range: an extrapolated number would be trusted by
    the thresholds as if it were measured.
    """
    t, rh = float(temperature), float(humidity)
    if not in_valid_range(t, rh):
        return None
    # Round the exact decimal expansion of the float, half up (the sensors' convention).
    return Decimal(repr(kma_summer_apparent(t, rh))).quantize(_ONE_DECIMAL, ROUND_HALF_UP)
