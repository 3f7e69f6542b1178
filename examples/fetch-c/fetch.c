/* Fetch in C: gets /catalog.json from the backend `api` with a subrequest and answers with
 * the origin's status and body, the body upper-cased. Build:
 *   clang --target=wasm32-wasi -O2 -I guest/c -o fetch-c.wasm examples/fetch-c/fetch.c */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "outpost_http.h"

static int answer_error(int code) {
    int status = code == OUTPOST_HTTP_ERR_TIMEOUT ? 504 : code == OUTPOST_HTTP_ERR_BUSY ? 503 : 502;
    printf("Status: %d\r\nContent-Type: text/plain\r\n\r\nsubrequest failed: %d\n", status, code);
    return 0;
}

int main(void) {
    static const char backend[] = "api", method[] = "GET", path[] = "/catalog.json";
    static const char headers[] = "accept: application/json\n";
    int h = outpost_http_send(backend, strlen(backend), method, strlen(method), path, strlen(path),
                              headers, strlen(headers), 0, 0);
    if (h < 0) return answer_error(h);
    int status = outpost_http_status(h);
    printf("Status: 200\r\nContent-Type: text/plain\r\nX-Origin-Status: %d\r\n\r\n", status);
    char buf[4096];
    int n;
    while ((n = outpost_http_read(h, buf, sizeof buf)) > 0) {
        for (int i = 0; i < n; i++) buf[i] = (char)toupper((unsigned char)buf[i]);
        fwrite(buf, 1, (size_t)n, stdout);
    }
    outpost_http_close(h);
    if (n < 0) return answer_error(n);
    return 0;
}
