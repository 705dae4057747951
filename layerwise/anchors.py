"""Published few-label MNIST test errors (%), drawn as reference points beside measured results.

Copied from the project's shared notes (shared/anchors.md): Kingma et al. 2014, Table 1, a
compilation; quoted beside our numbers, never instead of them.
"""

FEW_LABEL_ERRORS = {  # method -> {labels: test error %}
    "NN (supervised only)": {100: 25.80, 600: 11.44, 1000: 10.7, 3000: 6.04},
    "CAE pretraining": {100: 13.47, 600: 6.3, 1000: 4.77, 3000: 3.22},
    "M1+TSVM (VAE features)": {100: 11.82, 600: 5.72, 1000: 4.24, 3000: 3.49},
}
SOURCE = "Kingma et al. 2014, Table 1"

RECONSTRUCTION_ERRORS = {  # squared error per test image, summed over pixels, 30-d codes
    "deep autoencoder 784-1000-500-250-30": 3.00, "logistic PCA": 8.01, "PCA": 13.87}
RECONSTRUCTION_SOURCE = "Hinton & Salakhutdinov 2006, Fig. 2"
RECONSTRUCTION_CODE_SIZE = 30
