// Java's own DataOutputStream.writeUTF and DataInputStream.readUTF, as a peer for
// tests/test_keys.py (run with `java ModifiedUtf8.java MODE ARGS...`, Java 11 or later).
//
//   write HEX...   each HEX is UTF-8 text; prints writeUTF's bytes (length included) in hex
//   read HEX...    each HEX is a name's bytes; prints readUTF's text as UTF-8 hex, or "error"
//   file PATH      reads a user file's name with readUTF; prints it as UTF-8 hex, then how
//                  many bytes follow it (salt and public key)
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;

public class ModifiedUtf8 {
    public static void main(String[] args) throws IOException {
        HexFormat hex = HexFormat.of();
        switch (args[0]) {
            case "write" -> {
                for (int i = 1; i < args.length; i++) {
                    String text = new String(hex.parseHex(args[i]), StandardCharsets.UTF_8);
                    ByteArrayOutputStream out = new ByteArrayOutputStream();
                    new DataOutputStream(out).writeUTF(text);
                    System.out.println(hex.formatHex(out.toByteArray()));
                }
            }
            case "read" -> {
                for (int i = 1; i < args.length; i++) {
                    byte[] name = hex.parseHex(args[i]);
                    ByteArrayOutputStream out = new ByteArrayOutputStream();
                    DataOutputStream data = new DataOutputStream(out);
                    data.writeShort(name.length);
                    data.write(name);
                    try (DataInputStream in =
                            new DataInputStream(new ByteArrayInputStream(out.toByteArray()))) {
                        byte[] text = in.readUTF().getBytes(StandardCharsets.UTF_8);
                        System.out.println(hex.formatHex(text));
                    } catch (IOException error) {
                        System.out.println("error");
                    }
                }
            }
            case "file" -> {
                try (DataInputStream in = new DataInputStream(new FileInputStream(args[1]))) {
                    String user = in.readUTF();
                    System.out.println(hex.formatHex(user.getBytes(StandardCharsets.UTF_8)));
                    System.out.println(in.readAllBytes().length);
                }
            }
            default -> throw new IllegalArgumentException("unknown mode " + args[0]);
        }
    }
}
