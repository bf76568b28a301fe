"""Reference: linear regression on both lags and the yearly cycle (sin/cos of the day);
validated on the last 100 training days."""
import os

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression


def features(frame):
    angle = 2 * np.pi * frame["day"] / 365
    return np.column_stack([frame["temp_lag1"], frame["temp_lag2"], np.sin(angle), np.cos(angle)])


train = pd.read_csv("data/train.csv")
test = pd.read_csv("data/test.csv")
fit, valid = train.iloc[:-100], train.iloc[-100:]
model = LinearRegression().fit(features(fit), fit["temp"])
rmse = float(np.sqrt(np.mean((model.predict(features(valid)) - valid["temp"]) ** 2)))
print(f"validation metric: {rmse:.4f}")
model.fit(features(train), train["temp"])
os.makedirs("submission", exist_ok=True)
pd.DataFrame({"id": test["id"], "temp": model.predict(features(test))}).to_csv("submission/submission.csv", index=False)
