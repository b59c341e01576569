"""Hidden-state probes: small classifiers on what the model itself reads from a conversation.

One home for what gated_cd's switch, the experts' probe router and the refusal probe share: the
feature (:mod:`~guardrail.probes.features`), the logistic regression
(:mod:`~guardrail.probes.logistic`), the weights and their file (:mod:`~guardrail.probes.weights`),
and the prompt probe with its shipped calibration (:mod:`~guardrail.probes.prompt`).
"""
