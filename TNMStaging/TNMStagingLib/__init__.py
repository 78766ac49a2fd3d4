"""TNMStaging library, in subpackages by layer and role (docs/architecture.md has the rules): ``core`` (AJCC
rules and the form's labelled choices, image and measured features, the staging classifier, one-case prediction;
never ``slicer`` or Qt), ``worker`` (the background staging process), ``scene`` (scene bridge: measured lesions, the
editable lesion table, the session that drops stale results, the result table), ``cli`` (the ``tnmstaging``
command), ``training`` (cohorts and feature tables) and ``testing`` (self-test scenarios on any CT)."""
