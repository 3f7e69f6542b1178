/*
 * outpost_http.h: subrequests from an outpost guest (wasm32-wasi, C) to the backends its app
 * declares, over the outpost_http_v1 imports. See docs/guest-abi.md.
 *
 *   int h = outpost_http_send("api", 3, "GET", 3, "/items.json", 11, "accept: application/json\n", 25, 0, 0);
 *   if (h < 0) { ... h is an OUTPOST_HTTP_ERR_* code ... }
 *   int status = outpost_http_status(h);
 *   char buf[4096]; int n;
 *   while ((n = outpost_http_read(h, buf, sizeof buf)) > 0) { ... }
 *   outpost_http_close(h);
 */
#ifndef OUTPOST_HTTP_H
#define OUTPOST_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define OUTPOST_HTTP_ERR_INVALID -1         /* a method, path or header outpost does not accept */
#define OUTPOST_HTTP_ERR_UNKNOWN_BACKEND -2 /* the app does not declare this backend */
#define OUTPOST_HTTP_ERR_LIMIT -3           /* 32 subrequests per request, or a body over its cap */
#define OUTPOST_HTTP_ERR_CONNECT -4         /* DNS, connect or TLS failed: answer 502 */
#define OUTPOST_HTTP_ERR_TIMEOUT -5         /* the origin was too slow: answer 504 */
#define OUTPOST_HTTP_ERR_ORIGIN -6          /* the origin broke off mid-response: answer 502 */
#define OUTPOST_HTTP_ERR_HANDLE -7          /* not an open response */
#define OUTPOST_HTTP_ERR_REFUSED -8         /* outpost refused the address the backend resolved to */
#define OUTPOST_HTTP_ERR_FAULT -9           /* a buffer lies outside the guest's memory */
#define OUTPOST_HTTP_ERR_BUSY -10           /* all of the backend's connections are in use: answer 503 */

#define OUTPOST_HTTP_IMPORT(name) __attribute__((import_module("outpost_http_v1"), import_name(name)))

/* Send a request to `backend`; headers are "Name: value\n" lines. Returns a response handle
 * (> 0) once the response head has arrived, or an error code (< 0). */
OUTPOST_HTTP_IMPORT("send")
int32_t outpost_http_send(const char *backend, size_t backend_len, const char *method, size_t method_len,
                          const char *path, size_t path_len, const char *headers, size_t headers_len,
                          const void *body, size_t body_len);

/* The response's status code, or an error code. */
OUTPOST_HTTP_IMPORT("status")
int32_t outpost_http_status(int32_t handle);

/* The response's headers as "name: value\n" lines: returns their length; they are written to
 * buf only when that length is at most buf_len. */
OUTPOST_HTTP_IMPORT("headers")
int32_t outpost_http_headers(int32_t handle, char *buf, size_t buf_len);

/* Read up to buf_len bytes of the body: the number read, 0 at its end, or an error code. */
OUTPOST_HTTP_IMPORT("read")
int32_t outpost_http_read(int32_t handle, void *buf, size_t buf_len);

/* Release the response (an unread body closes its connection). */
OUTPOST_HTTP_IMPORT("close")
int32_t outpost_http_close(int32_t handle);

#endif
