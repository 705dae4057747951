"""Typed pipeline configuration: pipelines.yaml -> validated, resolved PipelineConfig.

Every problem with a config (broken YAML, unknown key, wrong type, inconsistent sizes) is raised
as a ConfigError whose message names the file, the pipeline and the dotted key, so the CLI can
print it and exit 2 before any data is read or any MLflow run exists.

  schema.py   the pydantic models, constants, and layer resolution (resolve_layers)
  grid.py     the ablation grid a pipeline expands to (cells with their fine-tune settings in
              force, stacks, cell names; it imports schema.py, never the reverse)
  loading.py  reading the file (size and YAML-expansion guards), --set overrides, validation
  sweep.py    a sweep's search space
  errors.py   ConfigError and the wording of pydantic's errors

May import: pydantic, yaml, layerwise.paths (the default file), layerwise.errors: no torch, so the
CLI checks a config before the core loads. No Prefect or MLflow either: cron and timezone strings
are judged in flows/schedules.py, next to `layerwise serve`.
"""
from layerwise.config.errors import ConfigError, describe_errors
from layerwise.config.schema import (MNIST_CLASSES, MNIST_INPUT, MNIST_SHAPE, MNIST_TEST_IMAGES, MNIST_TRAIN_IMAGES,
                                     MNIST_FACTS, NAME_PATTERN, NAME_RULE, SEED_MAX, AblationConfig, Activation, DataConfig,
                                     DataFacts,
                                     Denoising, FinetuneConfig, LabelSpec, LayerConfig, LayerShape, Optimization, Optimizer,
                                     PipelineConfig, RetrievalConfig, ScheduleConfig, Seed, Steps, Strict, TrainingConfig,
                                     TrainingOverrides, UnrollConfig, name_problem, resolve_layers)
from layerwise.config.grid import cell_name, cells, method, needs_stack, stacks, variant_stack
from layerwise.config.loading import (MAX_CONFIG_BYTES, MAX_EXPANDED_CHARS, MAX_EXPANDED_NODES,
                                      MAX_OVERRIDE_BYTES, apply_overrides, baseline_values, flatten, load_all,
                                      load_pipeline, load_raw,
                                      read_pipelines_file, safe_yaml, searched_raw, trial_raw,
                                      validate_pipeline)

__all__ = [
    # errors
    "ConfigError", "describe_errors",
    # schema
    "MNIST_CLASSES", "MNIST_INPUT", "MNIST_SHAPE", "MNIST_TEST_IMAGES", "MNIST_TRAIN_IMAGES", "NAME_PATTERN",
    "NAME_RULE", "SEED_MAX", "AblationConfig", "Activation", "DataConfig", "DataFacts", "MNIST_FACTS", "Denoising", "FinetuneConfig",
    "LabelSpec", "LayerConfig", "LayerShape", "Optimization", "Optimizer", "PipelineConfig", "RetrievalConfig",
    "ScheduleConfig", "Seed", "Steps", "Strict", "TrainingConfig", "TrainingOverrides", "UnrollConfig", "name_problem",
    "resolve_layers",
    # grid
    "cell_name", "cells", "method", "needs_stack", "stacks", "variant_stack",
    # loading
    "MAX_CONFIG_BYTES", "MAX_EXPANDED_CHARS", "MAX_EXPANDED_NODES", "MAX_OVERRIDE_BYTES", "apply_overrides", "baseline_values",
    "flatten", "load_all", "load_pipeline", "load_raw", "read_pipelines_file", "safe_yaml", "searched_raw", "trial_raw",
    "validate_pipeline",
]
