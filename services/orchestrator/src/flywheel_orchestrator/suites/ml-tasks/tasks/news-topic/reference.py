"""Reference: TF-IDF of words and bigrams, logistic regression; validation macro-F1 on a 20% split."""
import os

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

train = pd.read_csv("data/train.csv")
test = pd.read_csv("data/test.csv")
model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=4.0, max_iter=2000))
X_tr, X_va, y_tr, y_va = train_test_split(train["text"], train["topic"], test_size=0.2, random_state=0)
model.fit(X_tr, y_tr)
print(f"validation metric: {f1_score(y_va, model.predict(X_va), average='macro'):.4f}")
model.fit(train["text"], train["topic"])
os.makedirs("submission", exist_ok=True)
pd.DataFrame({"id": test["id"], "topic": model.predict(test["text"])}).to_csv("submission/submission.csv", index=False)
