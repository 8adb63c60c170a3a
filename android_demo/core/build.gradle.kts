// Android-free logic of the demo: plain Java, unit-tested on any JVM (see run-tests.sh).
plugins {
    `java-library`
}

tasks.withType<JavaCompile>().configureEach {
    options.release.set(17)
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}
