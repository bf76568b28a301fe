"""Reference: linear trend times a weekday profile (log-linear regression on day + weekday one-hot);
validated on the last 60 training days."""
import os

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression


def features(frame):
    X = pd.get_dummies(frame["weekday"].astype("category").cat.set_categories(range(7)), prefix="wd").astype(float)
    X["day"] = frame["day"]
    return X


train = pd.read_csv("data/train.csv")
test = pd.read_csv("data/test.csv")
fit, valid = train.iloc[:-60], train.iloc[-60:]
model = LinearRegression().fit(features(fit), np.log(fit["sales"]))
mae = np.mean(np.abs(np.exp(model.predict(features(valid))) - valid["sales"]))
print(f"validation metric: {mae:.4f}")
model.fit(features(train), np.log(train["sales"]))
os.makedirs("submission", exist_ok=True)
pd.DataFrame({"id": test["id"], "sales": np.exp(model.predict(features(test)))}).to_csv("submission/submission.csv", index=False)
