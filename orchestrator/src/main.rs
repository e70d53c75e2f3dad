fn main() {
    println!("orchestrator: not built yet");
}
