fn main() {
    println!("jbazel: not built yet");
}
