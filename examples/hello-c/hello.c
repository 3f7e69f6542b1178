/* A C outpost app (clang --target=wasm32-wasi + wasi-libc): greets with the request line. */
#include <stdio.h>
#include <stdlib.h>

static const char *var(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

int main(void) {
    printf("Content-Type: text/plain\r\nX-Guest: c\r\n\r\n");
    printf("Hello from C! %s %s\n", var("REQUEST_METHOD"), var("PATH_INFO"));
    return 0;
}
