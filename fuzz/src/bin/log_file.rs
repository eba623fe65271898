fn main() {
    afl::fuzz!(|data: &[u8]| ringmq_fuzz::targets::log_file(data));
}
