fn main() {
    println!("supervisor: not built yet");
}
