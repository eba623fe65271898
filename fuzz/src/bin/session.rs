fn main() {
    afl::fuzz!(|data: &[u8]| ringmq_fuzz::targets::session(data));
}
