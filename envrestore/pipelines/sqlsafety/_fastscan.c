/* C-speed scans for the statement filter's hot paths (see fastscan.py, which holds
 * the pure-Python twins of both functions and the reasons; the two must agree).
 *
 * rows_tail(buf, start) -> int
 *     Reads buf[start:] as the rest of a mysqldump INSERT ... VALUES line, the way
 *     the mariadb client reads it: '...' literals with backslash escapes ('' is a
 *     close and a reopen).  Outside literals only whitespace , ( ) + - and words
 *     may appear, never "--", and ';' only as the last thing before trailing
 *     whitespace.  A word (a run of [0-9A-Za-z_$.]) must be NULL, 0x and hex digits,
 *     a number (digits, .digits, e/E [+-] digits), or b B x X right before a quote:
 *     never a name, so never `db.routine(` nor a function call.  Returns 1 (plain, ends its statement), 0 (plain,
 *     the statement goes on) or -1 (anything else: the caller's full check runs).
 *
 * rows_span(buf, start) -> (status, stop, newlines)
 *     rows_tail over whole lines from buf[start:] (the first may be the rest of an
 *     INSERT head's line): stops after the line whose rows end the statement
 *     (status 1), at the end of buf (0), or at the start of the first line that is
 *     not plain rows (-1); `newlines` counts the "\n" in buf[start:stop].
 *
 * copy_end(buf, start) -> (end, newlines)
 *     buf[start:] starts a line inside a COPY ... FROM stdin data block. `end` is the
 *     index just after psql's end-of-data line (exactly "\." then "\n", "\r\n" or the
 *     end of buf), or -1; `newlines` counts the "\n" in buf[start:end] (or to the end).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static unsigned char SAFE[256], WORD[256];

static void init_tables(void) {
    const char *safe = " \t\n\r\v\f,()+-";
    for (const char *c = safe; *c; c++) SAFE[(unsigned char)*c] = 1;
    const char *word = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_$.";
    for (const char *c = word; *c; c++) WORD[(unsigned char)*c] = 1;
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int is_hex(unsigned char c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The end of the word at p (WORD[*p]) when it is NULL, 0x hex, a number or a b/x
 * literal prefix; NULL for anything else (fastscan.py's _SAFE_TAIL, exactly). */
static const unsigned char *word_end(const unsigned char *p, const unsigned char *end) {
    const unsigned char *q = p + 1;
    unsigned char c = *p;
    if (c == '0' && q < end && (*q == 'x' || *q == 'X')) {
        for (q = p + 2; q < end && is_hex(*q); q++) {}
        if (q == p + 2) return NULL;
    } else if (is_digit(c)) {
        while (q < end && is_digit(*q)) q++;
        if (q + 1 < end && *q == '.' && is_digit(q[1]))
            for (q++; q < end && is_digit(*q); q++) {}
        if (q < end && (*q == 'e' || *q == 'E')) {
            const unsigned char *r = q + 1;
            if (r < end && (*r == '+' || *r == '-')) r++;
            if (r < end && is_digit(*r))
                for (q = r; q < end && is_digit(*q); q++) {}
        }
    } else if ((c == 'b' || c == 'B' || c == 'x' || c == 'X') && q < end && *q == '\'') {
        return q;
    } else if (end - p >= 4 && memcmp(p, "NULL", 4) == 0) {
        q = p + 4;
    } else {
        return NULL;
    }
    return q < end && WORD[*q] ? NULL : q;
}

static int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static int rows_tail_impl(const unsigned char *p, const unsigned char *end) {
    unsigned char prev = 0;
    while (p < end) {
        unsigned char c = *p;
        if (c == '\'') {
            /* A literal: jump from backslash to backslash (each escapes one byte) to the
             * closing quote, with memchr. */
            p++;
            const unsigned char *quote = memchr(p, '\'', (size_t)(end - p));
            for (;;) {
                if (quote == NULL) return -1; /* ends inside a literal */
                const unsigned char *slash = memchr(p, '\\', (size_t)(quote - p));
                if (slash == NULL) {
                    p = quote + 1;
                    break;
                }
                p = slash + 2; /* the escaped byte, whatever it is, is literal text */
                if (p > quote) /* it was the quote: look for the next one (linear, never rescanned) */
                    quote = p < end ? memchr(p, '\'', (size_t)(end - p)) : NULL;
            }
            prev = '\'';
            continue;
        }
        if (c == ';') {
            for (p++; p < end; p++)
                if (!is_space(*p)) return -1;
            return 1;
        }
        if (WORD[c]) {
            const unsigned char *after = word_end(p, end);
            if (after == NULL) return -1;
            prev = after[-1];
            p = after;
            continue;
        }
        if (!SAFE[c]) return -1;
        if (c == '-' && prev == '-') return -1;
        prev = c;
        p++;
    }
    return 0;
}

static PyObject *rows_tail(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*n", &view, &start)) return NULL;
    int result = -1;
    if (start >= 0 && start <= view.len) {
        const unsigned char *buf = (const unsigned char *)view.buf;
        Py_BEGIN_ALLOW_THREADS
        result = rows_tail_impl(buf + start, buf + view.len);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&view);
    return PyLong_FromLong(result);
}

static PyObject *rows_span(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*n", &view, &start)) return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len, newlines = 0;
    int status = 0;
    if (start < 0 || start > size) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    Py_ssize_t at = start; /* the first line may start before `start` (the INSERT head) */
    Py_BEGIN_ALLOW_THREADS
    while (at < size) {
        const unsigned char *nl = memchr(buf + at, '\n', (size_t)(size - at));
        Py_ssize_t end = nl == NULL ? size : (nl - buf) + 1;
        int line = rows_tail_impl(buf + at, buf + end);
        if (line < 0) {
            status = -1;
            break;
        }
        if (nl != NULL) newlines++;
        at = end;
        if (line == 1) {
            status = 1;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("(inn)", status, at, newlines);
}

static PyObject *copy_end(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*n", &view, &start)) return NULL;
    const unsigned char *buf = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len, found = -1, newlines = 0;
    if (start < 0 || start > size) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t at = start; /* always the start of a line */
    while (at < size) {
        if (buf[at] == '\\' && at + 1 < size && buf[at + 1] == '.') {
            Py_ssize_t after = at + 2;
            if (after == size) {
                found = after;
                break;
            }
            if (buf[after] == '\n') {
                found = after + 1;
                newlines++;
                break;
            }
            if (buf[after] == '\r' && after + 1 < size && buf[after + 1] == '\n') {
                found = after + 2;
                newlines++;
                break;
            }
        }
        const unsigned char *nl = memchr(buf + at, '\n', (size_t)(size - at));
        if (nl == NULL) break;
        newlines++;
        at = (nl - buf) + 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return Py_BuildValue("(nn)", found, newlines);
}

static PyMethodDef methods[] = {
    {"rows_tail", rows_tail, METH_VARARGS, "Plain INSERT rows from start? 1 ends, 0 goes on, -1 no."},
    {"rows_span", rows_span, METH_VARARGS, "(1 ended|0 end of buf|-1 stop, index, newlines)."},
    {"copy_end", copy_end, METH_VARARGS, "(index after the COPY end line or -1, newlines)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastscan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastscan(void) {
    init_tables();
    return PyModule_Create(&module);
}
