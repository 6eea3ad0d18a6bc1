"""Write hourly traffic tables for five cities, a generated regression task.

Usage: ``python examples/traffic/make_tables.py [out_dir]`` (default: this folder).

Each row is one hour at one city, in raw units: ``flow`` in vehicles per hour (the
target), ``temperature`` in degrees C, ``rain`` in mm, and the previous three hours'
flows. The cities share how traffic works (rush hours, weekends, rain, the last hours'
flow) but differ in level (300 to 3,000 vehicles/hour), rush-hour timing and shape,
weekend drop, climate and rain sensitivity, so a shared body with a per-city head has
something to gain. Persistent (AR) and hourly noise keep R^2 well below 1. Seeded, so
the same command writes the same files.

``city_k.csv`` holds all of city k's rows for the first 21 days, 504 rows (a federated
site holds out its own test rows from them); ``test.csv`` holds the next 14 days of every
city, pooled (city 0's 336 rows first, then city 1's, ...), with the same columns. Three
weeks per city is the scarce-data regime: a sensor network a few weeks old. (With 60
days per city, each city alone already came close to what the generator's noise allows.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 0
TRAIN_DAYS, TEST_DAYS = 21, 14  # hours start on a Monday at 00:00
LAGS = 3
# base: vehicles/hour at the busiest hour; am/pm: rush-hour peaks (hour, height);
# weekend: weekend level relative to weekdays; rain_sens: flow lost per mm, log scale;
# temp/wet: mean temperature in C and chance that a dry hour starts raining.
CITIES = [
    dict(base=300, am=(7, 0.8), pm=(17, 1.0), weekend=0.70, rain_sens=0.03, temp=10, wet=0.03),
    dict(base=800, am=(8, 1.0), pm=(17, 0.9), weekend=0.50, rain_sens=0.08, temp=14, wet=0.04),
    dict(base=1500, am=(7, 1.0), pm=(18, 1.0), weekend=0.60, rain_sens=0.05, temp=6, wet=0.06),
    dict(base=2200, am=(9, 0.6), pm=(16, 0.7), weekend=0.85, rain_sens=0.12, temp=18, wet=0.02),
    dict(base=3000, am=(6, 1.0), pm=(15, 0.8), weekend=0.35, rain_sens=0.02, temp=12, wet=0.05),
]


def weather(city: dict, hours: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Temperature (daily cycle, spring warming, day-to-day drift) and rain (showers that
    start at random and tend to persist, gamma-distributed mm per hour)."""
    drift = np.repeat(np.cumsum(rng.normal(0, 1.2, len(hours) // 24 + 1)) * 0.5, 24)[: len(hours)]
    temp = city["temp"] + 5 * np.sin(2 * np.pi * (hours % 24 - 9) / 24) + 0.08 * hours / 24 + drift
    raining = np.zeros(len(hours), bool)
    for t in range(1, len(hours)):
        raining[t] = rng.random() < (0.7 if raining[t - 1] else city["wet"])
    rain = np.where(raining, rng.gamma(0.8, 2.0, len(hours)), 0.0)
    return temp + rng.normal(0, 0.5, len(hours)), rain


def daily_shape(city: dict, hour: np.ndarray, weekend: np.ndarray) -> np.ndarray:
    """Relative flow by hour: a night floor, a daytime plateau and two rush-hour peaks on
    weekdays; one broad midday hump at the weekend."""
    def bump(centre, width):
        return np.exp(-0.5 * ((hour - centre) / width) ** 2)

    plateau = 0.35 * (1 / (1 + np.exp(-(hour - 6.5))) - 1 / (1 + np.exp(-(hour - 21))))
    weekday = 0.08 + plateau + city["am"][1] * 0.6 * bump(city["am"][0], 1.2)
    weekday = weekday + city["pm"][1] * 0.6 * bump(city["pm"][0], 1.6)
    weekend_shape = 0.08 + city["weekend"] * 0.7 * bump(13.5, 3.5)
    return np.where(weekend, weekend_shape, weekday)


def city_table(city: dict, rng: np.random.Generator) -> pd.DataFrame:
    """One city's hourly rows: calendar features, weather, lagged flows and the flow."""
    hours = np.arange(-LAGS, 24 * (TRAIN_DAYS + TEST_DAYS))  # the first LAGS only feed lags
    hour, day = hours % 24, (hours // 24) % 7
    weekend = day >= 5
    temp, rain = weather(city, hours, rng)
    ar = np.zeros(len(hours))
    for t in range(1, len(hours)):  # slow disturbances: events, roadworks, incidents
        ar[t] = 0.85 * ar[t - 1] + rng.normal(0, 0.07)
    level = city["base"] * daily_shape(city, hour, weekend) * np.exp(-city["rain_sens"] * rain)
    level = level * (1 + 0.005 * (temp - 12)) * np.exp(ar + rng.normal(0, 0.08, len(hours)))
    flow = np.round(level, 1)
    frame = pd.DataFrame({
        "hour_sin": np.sin(2 * np.pi * hour / 24), "hour_cos": np.cos(2 * np.pi * hour / 24),
        "dow_sin": np.sin(2 * np.pi * day / 7), "dow_cos": np.cos(2 * np.pi * day / 7),
        "weekend": weekend.astype(int), "temperature": temp.round(1), "rain": rain.round(1),
    })
    for lag in range(1, LAGS + 1):
        frame[f"flow_lag{lag}"] = np.roll(flow, lag)
    frame["flow"] = flow
    return frame.iloc[LAGS:].round(4).reset_index(drop=True)


def make_tables(out_dir: Path) -> None:
    """Write ``city_k.csv`` (first ``TRAIN_DAYS``) and the pooled ``test.csv`` (the rest)."""
    rng = np.random.default_rng(SEED)
    out_dir.mkdir(parents=True, exist_ok=True)
    cut = 24 * TRAIN_DAYS
    tests = []
    for k, city in enumerate(CITIES):
        table = city_table(city, rng)
        table.iloc[:cut].to_csv(out_dir / f"city_{k}.csv", index=False)
        tests.append(table.iloc[cut:])
        print(f"city_{k}.csv: {cut} rows, mean flow {table['flow'][:cut].mean():.0f} vehicles/hour")
    pd.concat(tests).to_csv(out_dir / "test.csv", index=False)
    print(f"test.csv: {sum(map(len, tests))} rows")


if __name__ == "__main__":
    make_tables(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
