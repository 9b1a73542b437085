/* trio_echo.output._safescan: the text formatter's safety test at memory speed (optional).
 *
 * all_safe(data) is ``not data.translate(None, SAFE_ASCII)`` (trio_echo/output/clean.py):
 * true when every byte is \n or printable ASCII other than the backslash, the bytes that
 * clean() passes through unchanged.  bytes.translate tests one byte at a time, about 0.35 ns
 * a byte, a third of the server's time on text (docs/performance.md, "Text mode"); this loop
 * has no branch per byte, so the compiler turns it into vector instructions: about 5 us per
 * 64 KiB against translate's 23.
 * Optional: a build that fails leaves the pure-Python test in use (clean.py says how it is
 * chosen), with the same answers (tests/test_safescan.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Bytes per block: the inner loop has a constant trip count and no early exit, which is what
 * lets the compiler vectorize it; the outer loop stops at the first block with an unsafe byte. */
#define BLOCK 64

static int
block_unsafe(const unsigned char *p, Py_ssize_t n)
{
    unsigned char bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        /* (c - 0x20) wraps below 0x20: >= 0x5f is a control or DEL or beyond ASCII. */
        bad |= (unsigned char)((((unsigned char)(c - 0x20) >= 0x5f) & (c != 0x0a)) | (c == 0x5c));
    }
    return bad;
}

static PyObject *
all_safe(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len, i = 0;
    int unsafe = 0;
    /* The GIL is kept: a few microseconds are less than what taking it back can cost. */
    for (; i + BLOCK <= n; i += BLOCK) {
        if (block_unsafe(p + i, BLOCK)) {
            unsafe = 1;
            break;
        }
    }
    if (!unsafe) {
        unsafe = block_unsafe(p + i, n - i);
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(!unsafe);
}

static PyMethodDef methods[] = {
    {"all_safe", all_safe, METH_O,
     "all_safe(data) -> bool: every byte of data is \\n or printable ASCII other than the "
     "backslash (not data.translate(None, SAFE_ASCII))."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_safescan", "The text formatter's safety test in C.", 0, methods,
};

PyMODINIT_FUNC
PyInit__safescan(void)
{
    return PyModuleDef_Init(&module);
}
