"""Router lifecycle for ML engineers: import or label outcome data, train a sequence
classifier, evaluate it in RouteLLM's cost–quality terms, calibrate its threshold and export a
checkpoint the serving router
(serve_app.routing.scorers) loads. Run `python -m router_training --help`.
"""
