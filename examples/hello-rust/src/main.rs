//! The smallest outpost app: a CGI response on stdout.
fn main() {
    print!("Content-Type: text/plain; charset=utf-8\r\n\r\nHello from outpost!\n");
}
