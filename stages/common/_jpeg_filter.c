/*
 * The custom filter that jpeg.dct hands to libturbojpeg's tjTransform(), in C.
 *
 * tjTransform() calls the filter once per block row of each component. Each target says what
 * to do with the rows of one component:
 *  - mode 0 (raw): copy the row as it is into an int16 (rows, cols, 8, 8) array, the same as
 *    the Python fallback in libturbojpeg.py;
 *  - mode 1 (int16) or 2 (float32, times a quantization step): write the stage's output layout
 *    straight away: take coefficients src[j] (natural order) of each block to position dst[j]
 *    of an output block of `stride` elements (2: times mul[j]), and repeat each block over
 *    ry x rx output blocks of an (out_rows, out_cols) grid (chroma on the luma grid), cut at
 *    the grid's edge. Output positions no dst names are left as they are (zeros).
 * Modes 1 and 2 also count all-zero source blocks (libjpeg's mark of damaged data).
 *
 * The module does not link against libturbojpeg and needs no TurboJPEG header: it only
 * exports the address of copy_rows() and the size of the table it reads, which
 * libturbojpeg.py checks against its ctypes mirror before use.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* The layouts of turbojpeg.h (TurboJPEG API 2.x and 3.x). */
typedef struct { int x, y, w, h; } tjregion;
typedef struct tjtransform {
    tjregion r;
    int op;
    int options;
    void *data;
    void *customFilter;
} tjtransform;

/* Where each component's rows go; mirrored by _Target / _Targets in libturbojpeg.py. */
typedef struct {
    int64_t address;     /* C-contiguous output array */
    int64_t row_bytes;   /* bytes of one source block row: cols * 64 * 2 */
    int64_t rows;        /* block rows to keep (libjpeg also delivers padding rows) */
    int64_t copied;      /* rows delivered so far */
    int64_t mode;        /* 0 raw copy, 1 int16 layout, 2 float32 layout */
    int64_t out_rows;    /* modes 1, 2: the output block grid */
    int64_t out_cols;
    int64_t ry;          /* output blocks per source block, along rows and cols */
    int64_t rx;
    int64_t stride;      /* output elements per block (1..64) */
    int64_t n;           /* coefficients taken per block (0..64) */
    int64_t zero_blocks; /* all-zero source blocks seen */
    int32_t src[64];
    int32_t dst[64];
    float mul[64];
} dp_target;

typedef struct {
    int64_t n;
    dp_target t[4];
} dp_targets;

static int is_zero(const short *block)
{
    int i;
    for (i = 0; i < 64; i++)
        if (block[i]) return 0;
    return 1;
}

/* Natural index of the j-th coefficient in zigzag order. */
static const int32_t ZIGZAG[64] = {
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48,
    41, 34, 27, 20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23,
    30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63};

#if defined(__has_attribute)
#if __has_attribute(fallthrough)
#define FALLTHROUGH __attribute__((fallthrough))
#endif
#endif
#ifndef FALLTHROUGH
#define FALLTHROUGH do {} while (0)
#endif

/* out[j] = block[ZIGZAG[j]] for j < n, unrolled with fixed offsets (the channels layout). */
static void zigzag_prefix(short *out, const short *block, int64_t n)
{
#define Z(j, natural) case (j) + 1: out[j] = block[natural]; FALLTHROUGH;
    switch (n) {
    Z(63, 63) Z(62, 62) Z(61, 55) Z(60, 47) Z(59, 54) Z(58, 61) Z(57, 60) Z(56, 53)
    Z(55, 46) Z(54, 39) Z(53, 31) Z(52, 38) Z(51, 45) Z(50, 52) Z(49, 59) Z(48, 58)
    Z(47, 51) Z(46, 44) Z(45, 37) Z(44, 30) Z(43, 23) Z(42, 15) Z(41, 22) Z(40, 29)
    Z(39, 36) Z(38, 43) Z(37, 50) Z(36, 57) Z(35, 56) Z(34, 49) Z(33, 42) Z(32, 35)
    Z(31, 28) Z(30, 21) Z(29, 14) Z(28, 7) Z(27, 6) Z(26, 13) Z(25, 20) Z(24, 27)
    Z(23, 34) Z(22, 41) Z(21, 48) Z(20, 40) Z(19, 33) Z(18, 26) Z(17, 19) Z(16, 12)
    Z(15, 5) Z(14, 4) Z(13, 11) Z(12, 18) Z(11, 25) Z(10, 32) Z(9, 24) Z(8, 17)
    Z(7, 10) Z(6, 3) Z(5, 2) Z(4, 9) Z(3, 16) Z(2, 8) Z(1, 1) Z(0, 0)
    default: break;
    }
#undef Z
}

/* Modes 1 and 2: one source block row into the output layout. */
static int convert_row(dp_target *g, const short *coeffs, int64_t row)
{
    int64_t cols = g->row_bytes / 128, elem = g->mode == 1 ? 2 : 4, n = g->n;
    int64_t block_bytes = g->stride * elem, out_row_bytes = g->out_cols * block_bytes;
    int64_t r0 = row * g->ry, c, i, j;
    char *out_row = (char *)(intptr_t)g->address + r0 * out_row_bytes;
    int32_t src[64], dst[64];
    float mul[64];
    int copy = g->mode == 1 && n == 64, contiguous = 1, zigzag = 1;

    if (g->stride < 1 || g->stride > 64 || n < 0 || n > 64 || g->ry < 1 || g->rx < 1)
        return -1;
    for (j = 0; j < n; j++) {  /* the indices must stay inside a block */
        src[j] = g->src[j], dst[j] = g->dst[j], mul[j] = g->mul[j];
        if (src[j] < 0 || src[j] > 63 || dst[j] < 0 || dst[j] >= g->stride) return -1;
        copy = copy && src[j] == j && dst[j] == j;
        contiguous = contiguous && dst[j] == j;
        zigzag = zigzag && dst[j] == j && src[j] == ZIGZAG[j];
    }
    for (c = 0; c < cols; c++) {
        const short *block = coeffs + 64 * c;
        int64_t c0 = c * g->rx;
        char *out;

        if (is_zero(block)) g->zero_blocks++;
        if (r0 >= g->out_rows || c0 >= g->out_cols) continue;
        out = out_row + c0 * block_bytes;
        if (copy) {
            memcpy(out, block, 128);
        } else if (zigzag && g->mode == 1) {
            zigzag_prefix((short *)out, block, n);
        } else if (zigzag) {  /* gather, then convert and scale in a loop that vectorizes */
            short picked[64];
            float *o = (float *)out;
            zigzag_prefix(picked, block, n);
            for (j = 0; j < n; j++) o[j] = (float)picked[j] * mul[j];
        } else if (g->mode == 1) {
            short *o = (short *)out;
            if (contiguous)
                for (j = 0; j < n; j++) o[j] = block[src[j]];
            else
                for (j = 0; j < n; j++) o[dst[j]] = block[src[j]];
        } else if (contiguous) {  /* gather, then convert and scale in a loop that vectorizes */
            short picked[64];
            float *o = (float *)out;
            for (j = 0; j < n; j++) picked[j] = block[src[j]];
            for (j = 0; j < n; j++) o[j] = (float)picked[j] * mul[j];
        } else {
            float *o = (float *)out;
            for (j = 0; j < n; j++) o[dst[j]] = (float)block[src[j]] * mul[j];
        }
        for (j = 1; j < g->rx && c0 + j < g->out_cols; j++)
            memcpy(out + j * block_bytes, out, (size_t)block_bytes);
    }
    for (i = 1; i < g->ry && r0 < g->out_rows && r0 + i < g->out_rows; i++)
        memcpy(out_row + i * out_row_bytes, out_row, (size_t)out_row_bytes);
    return 0;
}

static int copy_rows(short *coeffs, tjregion array, tjregion plane, int ci, int ti,
                     tjtransform *transform)
{
    dp_targets *targets = (dp_targets *)transform->data;
    dp_target *g;
    int64_t row;

    (void)ti;
    if (targets == NULL || ci < 0 || ci >= targets->n) return -1;
    g = &targets->t[ci];
    /* the header parser and libjpeg must agree on the plane, or the copy would overrun */
    if ((int64_t)array.w * 16 != g->row_bytes || (int64_t)plane.h != g->rows * 8) return -1;
    if (array.y < 0) return -1;
    row = array.y / 8;
    if (row >= g->rows) return 0;
    if (g->mode == 0)
        memcpy((char *)(intptr_t)g->address + row * g->row_bytes, coeffs, (size_t)g->row_bytes);
    else if (g->mode > 2 || convert_row(g, coeffs, row) < 0)
        return -1;
    g->copied++;
    return 0;
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_jpeg_filter",
    "C filter callback for tjTransform (see libturbojpeg.py).",
    -1,
    NULL,
};

PyMODINIT_FUNC PyInit__jpeg_filter(void)
{
    PyObject *m = PyModule_Create(&module);
    PyObject *address;

    if (m == NULL) return NULL;
    address = PyLong_FromVoidPtr((void *)copy_rows);
    if (address == NULL || PyModule_AddObject(m, "COPY_ROWS", address) < 0) {
        Py_XDECREF(address);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "TARGETS_SIZE", (long)sizeof(dp_targets)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
