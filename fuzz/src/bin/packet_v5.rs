fn main() {
    afl::fuzz!(|data: &[u8]| ringmq_fuzz::targets::packet_v5(data));
}
