/*
 * The custom filter that jpeg.dct hands to libturbojpeg's tjTransform(), in C.
 *
 * tjTransform() calls the filter once per block row of each component. Doing that in Python
 * (a ctypes callback) costs about a microsecond a row; this C version copies each row with
 * memcpy and is otherwise the same as the Python fallback in libturbojpeg.py. The module does
 * not link against libturbojpeg and needs no TurboJPEG header: it only exports the address
 * of copy_rows() and the size of the table it reads, which libturbojpeg.py checks against its
 * ctypes mirror before use.
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
    int64_t address;   /* int16 (rows, cols, 8, 8) C-contiguous output array */
    int64_t row_bytes; /* cols * 64 * 2 */
    int64_t rows;      /* block rows to keep (libjpeg also delivers padding rows) */
    int64_t copied;    /* rows copied so far */
} dp_target;

typedef struct {
    int64_t n;
    dp_target t[4];
} dp_targets;

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
    if (row < g->rows) {
        memcpy((char *)(intptr_t)g->address + row * g->row_bytes, coeffs, (size_t)g->row_bytes);
        g->copied++;
    }
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
