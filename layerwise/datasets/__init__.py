"""Where a run's images come from (`data.source`): the official MNIST files with their MD5 checks
(mnist.py), a torchvision dataset, a folder of images, or arrays in an .npz. Each gives a
SourceData (source.py); splits.py makes a run's splits and label subsets of it.

May import: torch, torchvision, numpy, layerwise.config, layerwise.errors."""
from layerwise.datasets.load import hold_out_test, load_source, source_path
from layerwise.datasets.source import UNLABELLED, Part, SourceData, check_source, to_unit

__all__ = ["UNLABELLED", "Part", "SourceData", "check_source", "hold_out_test", "load_source", "source_path",
           "to_unit"]
