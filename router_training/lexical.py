"""Fit the router's lexical prior (serve_app.routing.lexical) with scikit-learn.

TF-IDF over words and word pairs seen in at least `min_df` training prompts, then a
class-balanced, L2-regularised logistic regression on the router label. Only the training
split is used; the blend with the encoder (serve_app.routing.lexical) needs nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from router_training.config import LexicalPriorConfig
from serve_app.routing.lexical import TOKEN, LexicalPrior


def fit_lexical_prior(
    train_texts: Sequence[str],
    train_labels: np.ndarray,
    check_texts: Sequence[str],
    config: LexicalPriorConfig,
) -> LexicalPrior:
    vectorizer = TfidfVectorizer(
        ngram_range=(1, config.ngram_max),
        min_df=config.min_df,
        sublinear_tf=True,
        lowercase=True,
        token_pattern=TOKEN.pattern,
    )
    features = vectorizer.fit_transform(list(train_texts))
    model = LogisticRegression(
        C=config.inverse_regularisation, class_weight="balanced", max_iter=5000
    ).fit(features, train_labels)
    prior = LexicalPrior(
        vocabulary={term: int(i) for term, i in vectorizer.vocabulary_.items()},
        idf=vectorizer.idf_.astype(np.float64),
        coef=model.coef_[0].astype(np.float64),
        intercept=float(model.intercept_[0]),
        ngram_max=config.ngram_max,
        weight=config.weight,
    )
    served = prior.probabilities(list(check_texts))
    expected = model.predict_proba(vectorizer.transform(list(check_texts)))[:, 1]
    # The numpy scorer that serving runs must be the model that was fitted.
    if not np.allclose(served, expected, atol=1e-6):
        worst = float(np.abs(served - expected).max())
        raise RuntimeError(f"lexical prior scorer disagrees with scikit-learn by {worst}")
    return prior
