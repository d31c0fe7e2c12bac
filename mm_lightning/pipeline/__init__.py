"""The pipeline: the recipe's stages from one file, each run as its own ``mm-lightning fit`` process, resumably.

The flow: ``spec`` reads a pipeline file and composes each stage's config (dotted-key overrides, the inputs that
hand one stage's checkpoint to the next) -> ``plan`` decides per stage whether to run, resume, skip or start over
(from the ``manifest``, which records what ran, with which config, and its figures) -> ``runner`` runs the stages
in dependency order, independent ones side by side if the file asks, each through ``stage_process`` -> ``report``
draws the run on one step axis and writes the summary, from the TensorBoard scalars ``logs`` reads back, with
``verdict`` judging each stage by its capability checks against their chance; ``scene_grid`` draws what the model
says about validation scenes after alignment and after the last stage.
``cli`` is the ``mm-lightning pipeline`` command.
"""
