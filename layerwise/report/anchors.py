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

# Methods that pretrain layer-wise (or train an autoencoder jointly) and also use the unlabelled
# images while fine-tuning: the reference points of grids with an unlabelled objective (CAE, above,
# stays as the pretraining-only point). "As commonly quoted from each paper's table" (shared/anchors.md).
UNLABELLED_ERRORS = {
    "MTC (Rifai et al. 2011)": {100: 12.03, 600: 5.13, 1000: 3.64, 3000: 2.57},
    "DAE + pseudo-labels (Lee 2013)": {100: 10.49, 600: 4.01, 1000: 3.46, 3000: 2.69},
    "what-where AE (Zhao et al. 2015)": {100: 8.71, 600: 3.31, 1000: 2.83, 3000: 2.10},
    "ladder network (Rasmus et al. 2015)": {100: 1.06, 1000: 0.84},
}
UNLABELLED_SOURCE = "each paper's table"

RECONSTRUCTION_ERRORS = {  # squared error per test image, summed over pixels, 30-d codes
    "deep autoencoder 784-1000-500-250-30": 3.00, "logistic PCA": 8.01, "PCA": 13.87}
RECONSTRUCTION_SOURCE = "Hinton & Salakhutdinov 2006, Fig. 2"
RECONSTRUCTION_CODE_SIZE = 30
