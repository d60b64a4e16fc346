# frozen_string_literal: true

module OpsChain
  # Ruby's compiled form of the files every start loads (the library, Rake, Hashie, the standard library's), made
  # when the image is built (runner-image.sh calls `compile`): a start reads them instead of parsing and compiling
  # the same sources again. Ruby asks RubyVM::InstructionSequence.load_iseq for each file it loads; an entry is
  # used only while its source has the size and mtime it was compiled from, and anything else (actions.rb, a file
  # changed since, another Ruby) is compiled as usual.
  module CompiledCode
    DIR = File.expand_path('../../compiled', __dir__)

    module_function

    def use(dir = DIR)
      return unless File.directory?(dir)

      RubyVM::InstructionSequence.singleton_class.define_method(:load_iseq) { |path| CompiledCode.load(dir, path) }
    end

    # The compiled file for path, or nil (Ruby then compiles path itself).
    def load(dir, path)
      stamp, binary = File.binread(File.join(dir, entry_name(path))).split("\n", 2)
      return nil unless binary && stamp == stamp_of(path)

      RubyVM::InstructionSequence.load_from_binary(binary)
    rescue SystemCallError, RuntimeError, TypeError, ArgumentError
      nil
    end

    # Compiles every Ruby file loaded so far into dir (not the features Ruby provides itself, such as thread.rb).
    def compile(dir = DIR)
      Dir.mkdir(dir) unless File.directory?(dir)
      $LOADED_FEATURES.grep(%r{\A/.*\.rb\z}).select { |path| File.file?(path) }.each do |path|
        binary = RubyVM::InstructionSequence.compile_file(path).to_binary
        File.binwrite(File.join(dir, entry_name(path)), "#{stamp_of(path)}\n".b + binary)
      end
    end

    # Seconds only: an image layer's tar keeps no finer mtime.
    def stamp_of(path)
      stat = File.stat(path)
      "#{stat.size} #{stat.mtime.to_i}"
    end

    def entry_name(path) = "#{path.delete_prefix('/').gsub('%', '%25').gsub('/', '%2F')}.iseq"
  end
end
